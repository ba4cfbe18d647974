"""Built-in generated sources, so the demo and the tests run anywhere, offline.

- ``generated_math``: grade-school word problems in GSM8K's format: step-by-step solutions with
  calculator annotations ``<<expr=result>>`` and a final ``#### N``. Every number in a solution is
  computed by Python from the sampled quantities, never written by hand.
- ``generated_code``: small Python function-writing tasks in Code Alpaca's format (``instruction``,
  ``input``, ``output``) plus a ``test`` field holding asserts that the reference solution passes.

Both are deterministic for a given seed and are always named ``generated_*`` in manifests, so a
report can never pass them off as the real GSM8K or Code Alpaca.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kenji", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
ITEMS = ["apples", "stickers", "marbles", "cookies", "pencils", "books", "cards", "shells", "stamps", "beads"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _calc(expr: str, value: float) -> str:
    return f"{expr} = <<{expr}={_fmt(value)}>>{_fmt(value)}"


def _math_buy(r: random.Random) -> dict:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    n, price, paid = r.randint(2, 12), r.randint(2, 9), 0
    cost = n * price
    paid = cost + r.randint(1, 30)
    change = paid - cost
    q = (f"{name} buys {n} {item} that cost ${price} each. {name} pays with ${paid}. "
         f"How much change does {name} get back?")
    a = (f"The {item} cost {_calc(f'{n}*{price}', cost)} dollars.\n"
         f"{name} gets back {_calc(f'{paid}-{cost}', change)} dollars.\n#### {change}")
    return {"question": q, "answer": a}


def _math_share(r: random.Random) -> dict:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends = r.randint(2, 8)
    each = r.randint(2, 15)
    kept = r.randint(1, 20)
    total = friends * each + kept
    q = (f"{name} had {total} {item}. {name} kept {kept} and shared the rest equally among "
         f"{friends} friends. How many {item} did each friend get?")
    rest = total - kept
    a = (f"{name} shared {_calc(f'{total}-{kept}', rest)} {item}.\n"
         f"Each friend got {_calc(f'{rest}/{friends}', each)} {item}.\n#### {each}")
    return {"question": q, "answer": a}


def _math_weeks(r: random.Random) -> dict:
    name = r.choice(NAMES)
    per_day, days, weeks = r.randint(2, 30), r.randint(2, 7), r.randint(2, 6)
    week = per_day * days
    total = week * weeks
    q = (f"{name} reads {per_day} pages a day, {days} days a week. How many pages does {name} "
         f"read in {weeks} weeks?")
    a = (f"In one week {name} reads {_calc(f'{per_day}*{days}', week)} pages.\n"
         f"In {weeks} weeks {name} reads {_calc(f'{week}*{weeks}', total)} pages.\n#### {total}")
    return {"question": q, "answer": a}


def _math_percent(r: random.Random) -> dict:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    price = r.choice([20, 40, 50, 60, 80, 100, 120, 150, 200])
    pct = r.choice([10, 20, 25, 50])
    while price * pct % 100:  # keep the discount a whole number of dollars
        pct = r.choice([10, 20, 25, 50])
    n = r.randint(2, 6)
    off = price * pct // 100
    sale = price - off
    total = sale * n
    q = (f"A box of {item} costs ${price}. During a sale everything is {pct}% off. "
         f"{name} buys {n} boxes. How much does {name} pay?")
    a = (f"The discount is {_calc(f'{price}*{pct}/100', off)} dollars.\n"
         f"One box costs {_calc(f'{price}-{off}', sale)} dollars.\n"
         f"{n} boxes cost {_calc(f'{sale}*{n}', total)} dollars.\n#### {total}")
    return {"question": q, "answer": a}


def _math_ages(r: random.Random) -> dict:
    a_name, b_name = r.sample(NAMES, 2)
    b_age = r.randint(3, 20)
    times = r.randint(2, 4)
    years = r.randint(2, 10)
    a_age = b_age * times
    future = a_age + years
    q = (f"{a_name} is {times} times as old as {b_name}. {b_name} is {b_age} years old. "
         f"How old will {a_name} be in {years} years?")
    a = (f"{a_name} is {_calc(f'{b_age}*{times}', a_age)} years old.\n"
         f"In {years} years {a_name} will be {_calc(f'{a_age}+{years}', future)} years old.\n#### {future}")
    return {"question": q, "answer": a}


def _math_rate(r: random.Random) -> dict:
    name = r.choice(NAMES)
    speed, hours_a, hours_b = r.randint(20, 70), r.randint(1, 5), r.randint(1, 5)
    d1, d2 = speed * hours_a, speed * hours_b
    total = d1 + d2
    q = (f"{name} drives at {speed} miles per hour for {hours_a} hours, takes a break, then drives "
         f"{hours_b} more hours at the same speed. How many miles does {name} drive in total?")
    a = (f"Before the break {name} drives {_calc(f'{speed}*{hours_a}', d1)} miles.\n"
         f"After the break {name} drives {_calc(f'{speed}*{hours_b}', d2)} miles.\n"
         f"In total {name} drives {_calc(f'{d1}+{d2}', total)} miles.\n#### {total}")
    return {"question": q, "answer": a}


MATH_TEMPLATES: list[Callable[[random.Random], dict]] = [
    _math_buy, _math_share, _math_weeks, _math_percent, _math_ages, _math_rate]


def generate_math(n: int = 2000, seed: int = 0) -> list[dict]:
    """``n`` distinct GSM8K-format word problems (fields ``question``, ``answer``)."""
    r = random.Random(f"sftmix-math-{seed}")
    rows, seen = [], set()
    while len(rows) < n:
        row = r.choice(MATH_TEMPLATES)(r)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


# ---------------------------------------------------------------- code

def _code_multiples(r: random.Random) -> dict:
    k = r.randint(2, 9)
    fn = f"sum_multiples_of_{k}"
    return {
        "instruction": f"Write a Python function `{fn}(numbers)` that returns the sum of the numbers in the list that are multiples of {k}.",
        "input": "",
        "output": f"def {fn}(numbers):\n    return sum(n for n in numbers if n % {k} == 0)",
        "test": f"assert {fn}([]) == 0\nassert {fn}([{k}, 1, {2 * k}]) == {3 * k}\nassert {fn}([1]) == 0",
    }


def _code_longer(r: random.Random) -> dict:
    k = r.randint(2, 8)
    fn = f"words_longer_than_{k}"
    words = ["a" * (k + 1), "b" * k, "c" * (k + 3)]
    expect = [w for w in words if len(w) > k]
    return {
        "instruction": f"Write a Python function `{fn}(words)` that returns the words longer than {k} characters, keeping their order.",
        "input": "",
        "output": f"def {fn}(words):\n    return [w for w in words if len(w) > {k}]",
        "test": f"assert {fn}({words!r}) == {expect!r}\nassert {fn}([]) == []",
    }


def _code_power(r: random.Random) -> dict:
    p = r.randint(2, 5)
    fn = f"power_{p}_list"
    return {
        "instruction": f"Write a Python function `{fn}(numbers)` that returns a new list with each number raised to the power {p}.",
        "input": "",
        "output": f"def {fn}(numbers):\n    return [n ** {p} for n in numbers]",
        "test": f"assert {fn}([1, 2, 3]) == {[n ** p for n in (1, 2, 3)]!r}\nassert {fn}([]) == []",
    }


def _code_count_char(r: random.Random) -> dict:
    ch = r.choice("aeioustrn")
    fn = f"count_{ch}"
    return {
        "instruction": f"Write a Python function `{fn}(text)` that counts how many times the letter '{ch}' appears in a string, ignoring case.",
        "input": "",
        "output": f"def {fn}(text):\n    return text.lower().count({ch!r})",
        "test": f"assert {fn}('') == 0\nassert {fn}({(ch * 2 + 'x' + ch.upper())!r}) == 3",
    }


def _code_clamp(r: random.Random) -> dict:
    lo = r.randint(-10, 0)
    hi = r.randint(1, 20)
    fn = f"clamp_{abs(lo)}_{hi}"
    return {
        "instruction": f"Write a Python function `{fn}(x)` that limits x to the range [{lo}, {hi}].",
        "input": "",
        "output": f"def {fn}(x):\n    return max({lo}, min({hi}, x))",
        "test": f"assert {fn}({lo - 5}) == {lo}\nassert {fn}({hi + 5}) == {hi}\nassert {fn}(0) == 0",
    }


def _code_repeat(r: random.Random) -> dict:
    sep = r.choice(["-", ",", " ", "|", "+"])
    n = r.randint(2, 5)
    fn = f"repeat_join_{n}"
    return {
        "instruction": f"Write a Python function `{fn}(word)` that returns the word repeated {n} times, joined by {sep!r}.",
        "input": "",
        "output": f"def {fn}(word):\n    return {sep!r}.join([word] * {n})",
        "test": f"assert {fn}('ab') == {sep.join(['ab'] * n)!r}",
    }


def _code_filter_range(r: random.Random) -> dict:
    lo, hi = sorted(r.sample(range(0, 50), 2))
    fn = f"between_{lo}_and_{hi}"
    data = [lo - 1, lo, (lo + hi) // 2, hi, hi + 1]
    expect = [x for x in data if lo <= x <= hi]
    return {
        "instruction": f"Write a Python function `{fn}(numbers)` that keeps only the numbers between {lo} and {hi} inclusive.",
        "input": "",
        "output": f"def {fn}(numbers):\n    return [n for n in numbers if {lo} <= n <= {hi}]",
        "test": f"assert {fn}({data!r}) == {expect!r}",
    }


CODE_TEMPLATES: list[Callable[[random.Random], dict]] = [
    _code_multiples, _code_longer, _code_power, _code_count_char, _code_clamp, _code_repeat,
    _code_filter_range]

_FIXED_CODE = [
    ("reverse_words(sentence)", "reverses the order of the words in a sentence",
     "def reverse_words(sentence):\n    return ' '.join(sentence.split()[::-1])",
     "assert reverse_words('a b c') == 'c b a'"),
    ("is_palindrome(text)", "checks whether a string reads the same backwards, ignoring case and spaces",
     "def is_palindrome(text):\n    s = ''.join(text.lower().split())\n    return s == s[::-1]",
     "assert is_palindrome('Never odd or even')\nassert not is_palindrome('abc')"),
    ("fibonacci(n)", "returns the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "assert fibonacci(0) == 0\nassert fibonacci(10) == 55"),
    ("factorial(n)", "returns n! for a non-negative integer n",
     "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
     "assert factorial(0) == 1\nassert factorial(5) == 120"),
    ("gcd(a, b)", "returns the greatest common divisor of two positive integers",
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
     "assert gcd(12, 18) == 6\nassert gcd(7, 5) == 1"),
    ("flatten(lists)", "flattens a list of lists into one list",
     "def flatten(lists):\n    return [x for sub in lists for x in sub]",
     "assert flatten([[1, 2], [], [3]]) == [1, 2, 3]"),
    ("word_count(text)", "returns a dict mapping each word to how often it occurs",
     "def word_count(text):\n    counts = {}\n    for w in text.split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
     "assert word_count('a b a') == {'a': 2, 'b': 1}"),
    ("second_largest(numbers)", "returns the second largest distinct number in a list",
     "def second_largest(numbers):\n    return sorted(set(numbers))[-2]",
     "assert second_largest([1, 3, 3, 2]) == 2"),
]


def generate_code(n: int = 1000, seed: int = 0) -> list[dict]:
    """``n`` distinct Code Alpaca-format tasks with a ``test`` field the ``output`` passes."""
    rows = [{"instruction": f"Write a Python function `{sig}` that {what}.", "input": "", "output": out, "test": test}
            for sig, what, out, test in _FIXED_CODE][:n]
    r = random.Random(f"sftmix-code-{seed}")
    seen = {row["instruction"] for row in rows}
    attempts = 0
    while len(rows) < n:
        row = r.choice(CODE_TEMPLATES)(r)
        attempts += 1
        if row["instruction"] not in seen:
            seen.add(row["instruction"])
            rows.append(row)
        if attempts > 200 * n:
            break  # the template space is exhausted; return what is distinct
    return rows
