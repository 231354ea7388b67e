"""Prompts for the generation-fidelity benchmark: four per kind, fifteen kinds, written for it (no data set)."""

from __future__ import annotations

PROMPTS: dict[str, list[str]] = {
    "prose": [
        "The committee met on a rainy Tuesday to decide whether the old library should",
        "After years of drought, the farmers in the valley finally",
        "She closed the laptop, looked out of the window, and realised that",
        "Most people underestimate how long it takes to learn a new language, because",
    ],
    "accented": [
        "Le petit café au coin de la rue était fermé, alors nous sommes allés",
        "El niño corrió hacia la playa mientras su abuela",
        "Die Universität München hat gestern angekündigt, dass",
        "Não sei se você já ouviu falar da história do",
    ],
    "cjk": [
        "東京は日本の首都であり、",
        "我们明天早上八点在火车站见面，然后",
        "서울의 겨울은 매우 춥지만",
        "この本はとても面白くて、",
    ],
    "emoji": [
        "Weekend plans: 🏖️ beach, 🍕 pizza, and",
        "Reactions to the launch were mixed 🚀🔥😬 but",
        "★★★★☆ Great product → fast delivery ✓, but the",
        "Temperature today: 23°C ± 2°, wind ≈ 15 km/h, humidity",
    ],
    "numbers": [
        "The invoice dated 2024-03-15 lists a total of $1,284.50, due on",
        "Between 1990 and 2020 the population grew from 4.2 million to",
        "Meeting rescheduled: Monday 09:30 → Wednesday 14:",
        "Order #48213 shipped on 12/07/2023; tracking number 1Z999AA1",
    ],
    "markdown": [
        "# Installation\n\nTo install the package, run:\n\n```bash\npip install",
        "## Features\n\n- Fast parsing of large files\n- Streaming output\n-",
        "| Name | Age | City |\n|------|-----|------|\n| Alice | 30 | Paris |\n|",
        "> **Note:** this API is experimental and may change in",
    ],
    "python": [
        "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n",
        "class Counter:\n    def __init__(self):\n        self.counts = {}\n\n    def add(self, item):\n",
        "import os\n\nfor root, dirs, files in os.walk('.'):\n    for name in files:\n",
        "try:\n    value = int(text)\nexcept ValueError:\n",
    ],
    "c": [
        "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    if (argc < 2) {\n",
        "static int compare(const void *a, const void *b) {\n    return",
        "struct node {\n    int value;\n    struct node *next;\n};\n\nstruct node *push(struct node *head, int v) {\n",
        "for (size_t i = 0; i < n; ++i) {\n    sum +=",
    ],
    "javascript": [
        "const fetchUser = async (id) => {\n  const response = await fetch(`/api/users/${id}`);\n",
        "function debounce(fn, wait) {\n  let timer;\n  return function (...args) {\n",
        "document.querySelectorAll('.item').forEach((el) => {\n  el.addEventListener('click', () => {\n",
        "export default {\n  name: 'TodoList',\n  data() {\n    return {\n",
    ],
    "sql": [
        "SELECT customer_id, COUNT(*) AS orders\nFROM orders\nWHERE created_at >= '2024-01-01'\nGROUP BY",
        "CREATE TABLE users (\n    id SERIAL PRIMARY KEY,\n    email VARCHAR(255) NOT NULL,\n",
        "UPDATE products SET price = price * 1.1 WHERE",
        "SELECT p.name, c.name FROM products p JOIN categories c ON",
    ],
    "shell": [
        "#!/bin/bash\nset -euo pipefail\n\nfor f in *.log; do\n",
        "find . -name '*.tmp' -mtime +7 |",
        "if [ -z \"$HOME\" ]; then\n  echo",
        "docker run --rm -it -v \"$(pwd)\":/app -w /app",
    ],
    "json_yaml": [
        "{\n  \"name\": \"example\",\n  \"version\": \"1.0.0\",\n  \"dependencies\": {\n",
        "server:\n  host: 0.0.0.0\n  port: 8080\nlogging:\n",
        "[{\"id\": 1, \"tags\": [\"red\", \"blue\"]}, {\"id\": 2, \"tags\": [",
        "steps:\n  - name: Checkout\n    uses: actions/checkout@v4\n  - name:",
    ],
    "whitespace": [
        "Name:      Alice\nAge:       30\nCountry:",
        "a    b    c\n1    2    3\n4    5",
        "Total        \t\t 42\nSubtotal     \t\t",
        "word  word   word    word     ",
    ],
    "indentation": [
        "def outer():\n    def inner():\n        for i in range(3):\n            if i % 2:\n",
        "<ul>\n  <li>\n    <a href=\"/home\">Home</a>\n  </li>\n  <li>\n",
        "if (x) {\n\tif (y) {\n\t\tif (z) {\n",
        "root:\n  child:\n    grandchild:\n      leaf:",
    ],
    "repetitive": [
        "one, two, one, two, one, two, one,",
        "la la la la la la la la",
        "ABABABABABABABAB",
        "- item\n- item\n- item\n- item\n-",
    ],
}
