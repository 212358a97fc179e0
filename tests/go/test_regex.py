"""Go RE2 syntax translated to Python re: same matches as Go, or a clear refusal."""

from __future__ import annotations

import re
import warnings

import pytest

from procstream._go.regex import GoRegex, GoRegexError, compile_go, translate

# (Go pattern, text, Go's FindStringSubmatch result -- None for no match)
CASES: list[tuple[str, str, tuple[str, ...] | None]] = [
    # process-exporter's own examples
    (r"-config.path\s+(?P<Cfgfile>\S+)", "/bin/pe -config.path /etc/pe.yml", ("-config.path /etc/pe.yml", "/etc/pe.yml")),
    ("-D\\s+.+?(?P<Path>[^/]+)(?:$|\\s)", "/usr/bin/postmaster -D /data/pg", ("-D /data/pg", "pg")),
    (".+", "", None),
    # unanchored search, leftmost-first like RE2
    ("b+", "abbbc", ("bbb",)),
    ("a|ab", "ab", ("a",)),
    # $ is end of text without (?m): a trailing newline does not end the text
    ("abc$", "abc\n", None),
    ("abc$", "abc", ("abc",)),
    (r"abc\z", "abc", ("abc",)),
    (r"\Aabc", "xabc", None),
    ("^b", "a\nb", None),
    ("(?m)^b$", "a\nb\nc", ("b",)),
    ("(?m:^b$)", "a\nb", ("b",)),
    # . excludes \n unless (?s)
    ("a.b", "a\nb", None),
    ("(?s)a.b", "a\nb", ("a\nb",)),
    # \d \w \s \b are ASCII in Go
    (r"\d+", "\u0663\u0664", None),
    (r"(?P<W>\w+)\z", "h\u00e9llo", ("llo", "llo")),
    (r"a\sb", "a\vb", None),
    (r"a\sb", "a\tb", ("a\tb",)),
    (r"\bx", "\u00e9x", ("x",)),
    (r"\Bx", "ax", ("x",)),
    (r"[\D]+", "ab1", ("ab",)),
    (r"\W", "\u00e9", ("\u00e9",)),
    # POSIX classes, also negated and inside a bigger class
    ("[[:upper:]]+", "xABc", ("AB",)),
    ("[[:^alpha:]]+", "ab12c", ("12",)),
    ("[_[:digit:]]+", "a_1_b", ("_1_",)),
    ("[[:space:]]", "a\vb", ("\v",)),
    ("[[:punct:]]+", "a.,;b", (".,;",)),
    ("[[:xdigit:]]+", "zzBEEFzz", ("BEEF",)),
    ("[[:word:]]+", "-a_1-", ("a_1",)),
    ("[[:alpha]+", "x[:ha]", ("[:ha",)),  # no ":]": "[" and ":alpha" are literals
    # { that is not a repeat is a literal in Go (Python would read {,2} as {0,2})
    ("(?P<M>x{,2})", "xx{,2}", ("x{,2}", "x{,2}")),
    ("x{2}", "axxx", ("xx",)),
    ("x{2,}", "axxx", ("xxx",)),
    ("x{1,2}?", "xxx", ("x",)),
    ("a{", "a{", ("a{",)),
    ("a{01}", "a{01}", ("a{01}",)),
    # \Q...\E, octal and hex escapes, escaped punctuation
    (r"\Q.+\E+", "a.++", (".++",)),
    (r"\Qa.b", "xa.b", ("a.b",)),
    (r"\101\0", "A\0", ("A\0",)),
    (r"\x41\x{1F600}", "A\U0001F600", ("A\U0001F600",)),
    (r"\.\-\ ", ".- ", (".- ",)),
    (r"\t\n", "\t\n", ("\t\n",)),
    # classes: ] first is a literal, - at the edges, ranges, escapes
    ("[]a]+", "x]a]", ("]a]",)),
    ("[^]a]+", "]]bc", ("bc",)),
    ("[a-]+", "x-a-", ("-a-",)),
    ("[-a]+", "x-a-", ("-a-",)),
    ("[a-c-e]+", "zb-ez", ("b-e",)),
    (r"[\]\\]+", "a]\\b", ("]\\",)),
    (r"[\x41-\x43]+", "xABCD", ("ABC",)),
    ("[&~|]+", "a&~|b", ("&~|",)),
    # flags: (?i) in the middle of a group lasts to the group's end, across |
    ("a(?i)b|c", "C", ("C",)),
    ("a(?i)b|c", "aB", ("aB",)),
    ("a(?i)b|c", "AB", None),
    ("(?i:a)b", "Ab", ("Ab",)),
    ("(?i:a)b", "AB", None),
    ("(?i)[^a]", "A", None),
    ("(?i)[a-c]+", "xABCx", ("ABC",)),
    ("(?i)\u00c9", "\u00e9", ("\u00e9",)),
    ("(?i)x(?-i)y", "XY", None),
    ("(?i)x(?-i)y", "Xy", ("Xy",)),
    ("(?U)a+", "aaa", ("a",)),
    ("(?U)a+?", "aaa", ("aaa",)),
    ("(?)a", "a", ("a",)),
    # groups: unnamed and named, Go's (?<name>) too; non-participating groups give ""
    ("(a)(?P<N>b)(c)", "abc", ("abc", "a", "b", "c")),
    ("(?<N>b)", "b", ("b", "b")),
    ("(?P<A>zz)?(?P<B>q)", "q", ("q", "", "q")),
    ("(?:a)(b)", "ab", ("ab", "b")),
    # repeating an empty-width assertion is fine in Go
    ("^*a", "a", ("a",)),
    ("()*a", "a", ("a", "")),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), CASES)
def test_matches_like_go(pattern: str, text: str, expected: tuple[str, ...] | None) -> None:
    rx = compile_go(pattern)
    assert rx.find_submatch(text) == expected
    assert rx.search(text) is (expected is not None)


def test_subexp_names_follow_go() -> None:
    assert compile_go("(a)(?P<N>b)((?:c)(?<M>d))").subexp_names == ("", "", "N", "", "M")
    assert compile_go("abc").subexp_names == ("",)


def test_translation_is_explicit_python() -> None:
    pattern, names = translate(r"(?P<Cfg>\S+)$")
    assert names == ("", "Cfg")
    assert "\\Z" in pattern and "(?P<" not in pattern  # groups renamed to positions
    # never a global Python flag, whatever the Go flags
    assert not re.match(r"\(\?[aiLmsux]+\)", translate("(?i)a")[0])


def test_no_python_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pattern in ("[[&&]]", "[a-z--]", "[~~]", "[||]", "[[:alpha:][]"):
            compile_go(pattern)


def test_go_regex_is_a_value() -> None:
    rx = compile_go("a(b)")
    assert isinstance(rx, GoRegex)
    assert rx.source == "a(b)"
    assert rx.compiled.pattern == rx.python_pattern
    with pytest.raises(AttributeError):
        rx.source = "x"  # type: ignore[misc]


# (pattern, words the message must contain)
ERRORS: list[tuple[str, str]] = [
    # Python can't do these the Go way
    (r"\pL", "Unicode class \\pL is not supported"),
    (r"\p{Greek}", "Unicode class \\p{Greek}"),
    (r"\PN", "Unicode class \\PN"),
    (r"[\pL]", "Unicode class"),
    # Go itself rejects these
    ("(a", "missing closing )"),
    ("a)", "unexpected )"),
    ("[a", "missing closing ]"),
    ("[z-a]", "invalid character class range"),
    ("[[:foo:]]", "invalid character class range [:foo:]"),
    ("[[:alpha:]", "missing closing ]"),
    ("a**", "invalid nested repetition operator"),
    ("a+*", "invalid nested repetition operator"),
    ("a{2}{3}", "invalid nested repetition operator"),
    ("a*??", "invalid nested repetition operator"),
    ("*a", "missing argument to repetition operator"),
    ("a|*", "missing argument to repetition operator"),
    ("(+)", "missing argument to repetition operator"),
    ("a{1001}", "invalid repeat count"),
    ("a{3,2}", "invalid repeat count"),
    (r"(a)\1", "backreferences are not supported"),
    (r"\Z", "invalid escape sequence \\Z"),
    (r"\C", "invalid escape sequence \\C"),
    (r"[\b]", "invalid escape sequence \\b"),
    (r"\x{110000}", "invalid escape sequence \\x"),
    (r"\xZ", "invalid escape sequence \\x"),
    ("a\\", "trailing backslash"),
    ("(?=a)", "invalid or unsupported Perl syntax"),
    ("(?!a)", "invalid or unsupported Perl syntax"),
    ("(?<=a)b", "invalid or unsupported Perl syntax"),
    ("(?<!a)b", "invalid or unsupported Perl syntax"),
    ("(?#c)", "invalid or unsupported Perl syntax"),
    ("(?x)a", "invalid or unsupported Perl syntax"),
    ("(?i-)a", "invalid or unsupported Perl syntax"),
    ("(?P=n)", "invalid or unsupported Perl syntax"),
    ("(?P<a>x)(?P<a>y)", "duplicate capture group name 'a'"),
    ("(?P<>x)", "invalid named capture"),
    ("(?P<a-b>x)", "invalid named capture"),
    ("(?P<a", "invalid named capture"),
]


@pytest.mark.parametrize(("pattern", "words"), ERRORS)
def test_refuses(pattern: str, words: str) -> None:
    with pytest.raises(GoRegexError) as info:
        compile_go(pattern)
    assert words in str(info.value)


def test_error_says_where() -> None:
    with pytest.raises(GoRegexError, match="at offset 3"):
        compile_go("abc)")
