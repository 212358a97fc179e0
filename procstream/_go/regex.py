"""Go (RE2) regular expressions, translated to Python ``re``.

process-exporter's ``cmdline`` selectors are Go regexps. Most of the syntax reads the same
in Python, but enough differs to mis-match silently: ``$`` (Go: end of text; Python: also
before a final newline), ``\\d``/``\\w``/``\\s``/``\\b`` (ASCII in Go, Unicode in Python),
``x{,3}`` (a literal in Go, a repeat in Python), mid-pattern flags like ``a(?i)b``, POSIX
classes ``[[:alpha:]]``, ``\\Q...\\E``, ``(?<name>...)``. So instead of handing the text to
``re`` we parse it with Go's rules and emit an explicit Python pattern: every construct
whose meaning depends on a flag is written out for the flags in force at that point, and
no Python flag is ever set globally.

What Python can't express the same way (Unicode classes ``\\pL``) is refused with
``GoRegexError``; so is what Go itself rejects (backreferences, look-around, ``a**``).

Call ``compile_go(pattern)`` once per selector (at config load); call
``GoRegex.find_submatch(text)`` per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GoRegex", "GoRegexError", "compile_go", "translate"]

# Go's limit on {n,m} counts: more is Go's "invalid repeat count" error.
_MAX_REPEAT = 1000
_MAX_RUNE = 0x10FFFF

Ranges = list[tuple[int, int]]


class GoRegexError(ValueError):
    """The pattern is not valid Go syntax, or uses Go syntax we can't reproduce in Python."""


def _r(text: str) -> Ranges:
    """Ranges from a compact spec like ``"09AZaz"`` (pairs of inclusive bounds)."""
    return [(ord(text[i]), ord(text[i + 1])) for i in range(0, len(text), 2)]


# ASCII classes exactly as Go's regexp/syntax package defines them.
_PERL: dict[str, Ranges] = {
    "d": _r("09"),
    "s": [(9, 10), (12, 13), (32, 32)],  # \t \n \f \r space -- no \v, unlike POSIX space
    "w": _r("09AZ__az"),
}
_POSIX: dict[str, Ranges] = {
    "alnum": _r("09AZaz"),
    "alpha": _r("AZaz"),
    "ascii": [(0, 0x7F)],
    "blank": [(9, 9), (32, 32)],
    "cntrl": [(0, 0x1F), (0x7F, 0x7F)],
    "digit": _r("09"),
    "graph": [(0x21, 0x7E)],
    "lower": _r("az"),
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(9, 13), (32, 32)],
    "upper": _r("AZ"),
    "word": _r("09AZ__az"),
    "xdigit": _r("09AFaf"),
}
# {n}, {n,}, {n,m}; Go refuses leading zeros, and then reads the "{" as a literal
_REPEAT = re.compile(r"\{(0|[1-9][0-9]*)(,(0|[1-9][0-9]*)?)?\}")
_HEX = re.compile(r"\\x(?:\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{2}))")
_SIMPLE_ESCAPES = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def _negate(ranges: Ranges) -> Ranges:
    """Complement of sorted, non-overlapping ``ranges`` within [0, 0x10FFFF]."""
    out: Ranges = []
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _char(cp: int) -> str:
    """One code point as a Python pattern atom, safe inside and outside a class."""
    c = chr(cp)
    if c.isascii() and c.isalnum():
        return c
    if c.isascii() and c.isprintable():
        return "\\" + c  # escaped punctuation is a literal both in and out of a class
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _class(ranges: Ranges, negated: bool = False) -> str:
    body = "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges)
    return f"[{'^' if negated else ''}{body}]"


def _has_case(cp: int) -> bool:
    c = chr(cp)
    return c.lower() != c or c.upper() != c or c.casefold() != c


@dataclass(frozen=True, slots=True)
class GoRegex:
    """A compiled Go regexp: the Python translation and Go's view of its groups."""

    source: str  # the Go text, as written in the config
    python_pattern: str  # what we handed to re.compile
    compiled: re.Pattern[str]
    #: Go's SubexpNames(): index 0 is the whole match (""), then one entry per capturing
    #: group in order of its "(" -- the name, or "" when unnamed
    subexp_names: tuple[str, ...]

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (Go's MatchString)."""
        return self.compiled.search(text) is not None

    def find_submatch(self, text: str) -> tuple[str, ...] | None:
        """Go's FindStringSubmatch: the leftmost match and its groups, or None.

        Groups that did not take part in the match are "" (Go can't tell them apart)."""
        m = self.compiled.search(text)
        if m is None:
            return None
        return (m.group(0),) + tuple(g if g is not None else "" for g in m.groups())


class _Translator:
    """One pass over a Go pattern, emitting the Python pattern as it goes."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.flags: frozenset[str] = frozenset()
        # one entry per open "(": the flags to restore at its ")"
        self.stack: list[frozenset[str]] = []
        self.names: list[str] = [""]
        # can a repetition operator follow? "atom": yes; "repeat": Go's nested-repeat
        # error; "none": nothing to repeat (start, after "(" or "|")
        self.last = "none"

    def fail(self, what: str) -> GoRegexError:
        return GoRegexError(f"{what} at offset {self.i}")

    def run(self) -> str:
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            if c == "(":
                self.open_group()
            elif c == ")":
                if not self.stack:
                    raise self.fail("unexpected )")
                self.flags = self.stack.pop()
                self.out.append(")")
                self.i += 1
                self.last = "atom"
            elif c == "|":
                self.out.append("|")
                self.i += 1
                self.last = "none"
            elif c in "*+?{":
                if not self.repeat():
                    self.literal(ord("{"))
                    self.i += 1
            elif c == "[":
                self.atom(self.parse_class())
            elif c == ".":
                self.atom("(?s:.)" if "s" in self.flags else ".")
                self.i += 1
            elif c == "^":
                self.atom("(?m:^)" if "m" in self.flags else "(?:\\A)")
                self.i += 1
            elif c == "$":
                self.atom("(?m:$)" if "m" in self.flags else "(?:\\Z)")
                self.i += 1
            elif c == "\\":
                self.escape()
            else:
                self.literal(ord(c))
                self.i += 1
        if self.stack:
            raise self.fail("missing closing )")
        return "".join(self.out)

    # -- atoms ---------------------------------------------------------------------------

    def atom(self, text: str) -> None:
        self.out.append(text)
        self.last = "atom"

    def literal(self, cp: int) -> None:
        text = _char(cp)
        self.atom(f"(?i:{text})" if "i" in self.flags and _has_case(cp) else text)

    def char_class(self, ranges: Ranges, negated: bool) -> None:
        text = _class(ranges, negated)
        self.atom(f"(?i:{text})" if "i" in self.flags else text)

    # -- repetition ----------------------------------------------------------------------

    def repeat(self) -> bool:
        """Emit the repetition operator at self.i; False if "{" is not one (a literal)."""
        p, start = self.p, self.i
        if p[start] == "{":
            m = _REPEAT.match(p, start)
            if m is None:
                return False  # Go, unlike Python, reads "{", "{,3}", "{x}" literally
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else -1)
            if lo > _MAX_REPEAT or hi > _MAX_REPEAT or (hi >= 0 and hi < lo):
                raise self.fail(f"invalid repeat count {m.group(0)}")
            op = m.group(0)
            self.i = m.end()
        else:
            op = p[start]
            self.i += 1
        lazy = self.i < len(p) and p[self.i] == "?"
        if lazy:
            self.i += 1
        if self.last == "none":
            raise GoRegexError(f"missing argument to repetition operator {p[start:self.i]!r} at offset {start}")
        if self.last == "repeat":
            raise GoRegexError(f"invalid nested repetition operator {p[start:self.i]!r} at offset {start}")
        # (?U) swaps the meaning of x* and x*?
        self.out.append(op + ("?" if lazy != ("U" in self.flags) else ""))
        self.last = "repeat"
        return True

    # -- groups and flags ----------------------------------------------------------------

    def open_group(self) -> None:
        p, i = self.p, self.i
        if not p.startswith("(?", i):
            self.names.append("")
            self.push("(", i + 1)
            return
        for prefix in ("(?P<", "(?<"):
            if p.startswith(prefix, i) and not p.startswith("(?<=", i) and not p.startswith("(?<!", i):
                end = p.find(">", i)
                if end < 0:
                    raise self.fail("invalid named capture")
                name = p[i + len(prefix) : end]
                if not name or not all(ch == "_" or ch.isalnum() for ch in name):
                    raise self.fail(f"invalid named capture {name!r}")
                if name in self.names:
                    raise self.fail(f"duplicate capture group name {name!r}")
                self.names.append(name)
                self.push("(", end + 1)
                return
        # Go's flag syntax: (?flags) or (?flags:re), flags from "imsU", optional "-"
        j, flags, sign, saw = i + 2, set(self.flags), 1, False
        while j < len(p):
            c = p[j]
            if c in "imsU":
                (flags.add if sign > 0 else flags.discard)(c)
                saw = True
            elif c == "-" and sign > 0:
                sign, saw = -1, False
            elif c in ":)":
                if sign < 0 and not saw:
                    break
                if c == ":":
                    self.push("(?:", j + 1)
                    self.flags = frozenset(flags)
                else:
                    # (?i) in the middle of a group lasts until that group's ")"
                    self.flags = frozenset(flags)
                    self.i = j + 1
                return
            else:
                break
            j += 1
        raise self.fail(f"invalid or unsupported Perl syntax {p[i:j + 1]!r}")

    def push(self, text: str, next_i: int) -> None:
        self.stack.append(self.flags)
        self.out.append(text)
        self.i = next_i
        self.last = "none"

    # -- escapes -------------------------------------------------------------------------

    def escape(self) -> None:
        p, i = self.p, self.i
        if i + 1 >= len(p):
            raise self.fail("trailing backslash at end of expression")
        c = p[i + 1]
        if c == "Q":
            end = p.find("\\E", i + 2)
            text = p[i + 2 :] if end < 0 else p[i + 2 : end]
            for ch in text:
                self.literal(ord(ch))
            self.i = len(p) if end < 0 else end + 2
            return
        assertions = {"A": "(?:\\A)", "z": "(?:\\Z)", "b": "(?a:\\b)", "B": "(?a:\\B)"}
        if c in assertions:
            self.atom(assertions[c])
            self.i = i + 2
            return
        perl = self.perl_class(i)
        if perl is not None:
            ranges, negated = perl
            self.char_class(ranges, negated)
            return
        cp = self.escaped_char(i)
        self.literal(cp)

    def perl_class(self, i: int) -> tuple[Ranges, bool] | None:
        """\\d \\D \\s \\S \\w \\W at ``i`` (consumed); \\p is refused; None otherwise."""
        c = self.p[i + 1]
        if c in "pP":
            end = i + 3
            if self.p.startswith("{", i + 2):
                close = self.p.find("}", i + 2)
                end = close + 1 if close >= 0 else len(self.p)
            raise GoRegexError(
                f"Unicode class {self.p[i:end]} is not supported (Python's re has no \\p); "
                "use an explicit class"
            )
        if c.lower() in _PERL:
            self.i = i + 2
            return _PERL[c.lower()], c.isupper()
        return None

    def escaped_char(self, i: int) -> int:
        """The code point of a character escape at ``i`` (consumed), by Go's rules."""
        p = self.p
        c = p[i + 1]
        if c in _SIMPLE_ESCAPES:
            self.i = i + 2
            return _SIMPLE_ESCAPES[c]
        if "0" <= c <= "7":
            # \1-\7 alone would be a backreference, which Go doesn't have; \0, \12, \123 are octal
            j = i + 2
            if c != "0" and not (j < len(p) and "0" <= p[j] <= "7"):
                raise self.fail(f"invalid escape sequence \\{c} (backreferences are not supported)")
            value = int(c)
            while j < i + 4 and j < len(p) and "0" <= p[j] <= "7":
                value = value * 8 + int(p[j])
                j += 1
            self.i = j
            return value
        if c == "x":
            m = _HEX.match(p, i)
            if m is None or int(m.group(1) or m.group(2), 16) > _MAX_RUNE:
                raise self.fail("invalid escape sequence \\x")
            self.i = m.end()
            return int(m.group(1) or m.group(2), 16)
        if c.isascii() and not c.isalnum():
            self.i = i + 2
            return ord(c)
        raise self.fail(f"invalid escape sequence \\{c}")

    # -- character classes ---------------------------------------------------------------

    def parse_class(self) -> str:
        """A [...] class at self.i (consumed); returns the emitted Python atom."""
        p, start = self.p, self.i
        i = start + 1
        negated = i < len(p) and p[i] == "^"
        if negated:
            i += 1
        ranges: Ranges = []
        first = True
        while True:
            if i >= len(p):
                self.i = start
                raise self.fail("missing closing ]")
            c = p[i]
            if c == "]" and not first:
                break
            first = False
            if p.startswith("[:", i):
                end = p.find(":]", i + 2)
                if end >= 0:
                    name = p[i + 2 : end]
                    neg = name.startswith("^")
                    key = name[1:] if neg else name
                    if key not in _POSIX:
                        self.i = i
                        raise self.fail(f"invalid character class range [:{name}:]")
                    ranges += _negate(_POSIX[key]) if neg else _POSIX[key]
                    i = end + 2
                    continue
            if c == "\\" and i + 1 < len(p):
                self.i = i
                perl = self.perl_class(i)
                if perl is not None:
                    ranges += _negate(perl[0]) if perl[1] else perl[0]
                    i = self.i
                    continue
            lo, i = self.class_char(i)
            hi = lo
            if i + 1 < len(p) and p[i] == "-" and p[i + 1] != "]":
                hi, i = self.class_char(i + 1)
                if hi < lo:
                    self.i = start
                    raise self.fail(f"invalid character class range {p[start:i]!r}")
            ranges.append((lo, hi))
        self.i = i + 1
        merged = _negate(_negate(ranges))  # sort and merge overlaps
        if negated:
            # Go folds case before negating; Python's (?i:[^...]) does the same.
            return f"(?i:{_class(merged, True)})" if "i" in self.flags else _class(merged, True)
        return f"(?i:{_class(merged)})" if "i" in self.flags else _class(merged)

    def class_char(self, i: int) -> tuple[int, int]:
        """One (possibly escaped) character inside a class: (code point, next index)."""
        p = self.p
        if p[i] == "\\":
            if i + 1 >= len(p):
                self.i = i
                raise self.fail("missing closing ]")
            self.i = i
            cp = self.escaped_char(i)
            return cp, self.i
        return ord(p[i]), i + 1


def translate(pattern: str) -> tuple[str, tuple[str, ...]]:
    """Translate Go regexp syntax to an equivalent Python pattern.

    Returns (python_pattern, subexp_names). Raises GoRegexError when Go would reject the
    pattern or Python can't match it the same way."""
    translator = _Translator(pattern)
    python_pattern = translator.run()
    return python_pattern, tuple(translator.names)


def compile_go(pattern: str) -> GoRegex:
    """Compile a Go regexp once (config load time), ready to run per process."""
    python_pattern, names = translate(pattern)
    try:
        compiled = re.compile(python_pattern)
    except re.error as exc:  # our translation should always compile; say so if not
        raise GoRegexError(f"cannot be compiled in Python: {exc}") from exc
    return GoRegex(pattern, python_pattern, compiled, names)
