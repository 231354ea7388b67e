"""``lmfuse serve``: an OpenAI-compatible HTTP endpoint for a pack (loopback only unless --host says so).

    lmfuse serve --pack default
    lmfuse serve --model smollm2 --model gemma3 --port 8001 --api-key secret --max-batch 8
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "lmfuse-pack", "prompt": "def fib(n):", "max_tokens": 32}'

The API key can also come from $LMFUSE_API_KEY; without one the server does not authenticate.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmfuse.cli.pack_args import add_pack_arguments, load_pack


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="serve a pack behind an OpenAI-compatible HTTP endpoint",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pack_arguments(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $LMFUSE_API_KEY, else none)")
    g.add_argument("--model-name", default="lmfuse-pack", help="the model id clients ask for")
    g.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask for")
    g.add_argument("--default-max-tokens", type=int, default=64, help="max_tokens when a request gives none")
    g.add_argument("--max-batch", type=int, default=8, help="requests per call into the pack (1 = one at a time)")
    g.add_argument("--max-pending", type=int, default=64,
                   help="requests queued or running at once; more get HTTP 429")
    g.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long an idle worker waits for more requests to batch")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    g.add_argument("--max-prompt-chars", type=int, default=100_000, help="longest prompt in characters (400 beyond)")
    g.add_argument("--max-prompt-tokens", type=int, default=16_384,
                   help="longest prompt in tokens, as its longest member tokenization counts them (400 beyond)")
    g.add_argument("--chat-template-member", help="member whose chat template renders conversations")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from lmfuse.serve import ServeConfig, serve_forever
    except ModuleNotFoundError as exc:  # fastapi / uvicorn are the `serve` extra
        from lmfuse.errors import InputError

        raise InputError(f"lmfuse serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'lmfuse[serve]'") from None
    config = ServeConfig(model_name=args.model_name, host=args.host, port=args.port,
                         api_key=ServeConfig.key_from_env(args.api_key), max_tokens_limit=args.max_tokens_limit,
                         default_max_tokens=args.default_max_tokens, max_batch=args.max_batch,
                         max_pending=args.max_pending, batch_window_ms=args.batch_window_ms,
                         max_body_bytes=args.max_body_bytes, chat_template_member=args.chat_template_member,
                         max_prompt_chars=args.max_prompt_chars, max_prompt_tokens=args.max_prompt_tokens)
    pack = load_pack(args)
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        print(f"lmfuse serve: warning: listening on {config.host} without an API key", file=sys.stderr)
    auth = "API key required" if config.api_key else "no API key"
    print(f"serving {config.model_name!r} ({', '.join(pack.names)}) on http://{config.host}:{config.port}/v1 "
          f"({auth})", file=sys.stderr)
    serve_forever(pack, config, log_level=args.log_level)
    return 0
