"""Hide secrets in command lines before they leave the process.

What is hidden, what isn't, and the ``--redact`` and ``--no-cmdline`` options are written
for users in docs/redaction.md; this module implements those rules.

Why it is done here, once: a command line is written by whoever started the process, and
people put passwords and tokens in them. procstream sends command lines to every
subscriber, to ``/api/snapshot`` and to the event log, so they are redacted before any of
that — once per process, when it is first reported (``EventBuilder`` keeps the result), so
every output shows the same text. The rules are heuristics that prefer hiding a harmless
value to showing a secret; ``--redact`` and ``--no-cmdline`` are there for the rest.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["REDACTED", "Redactor", "RedactPatternError", "is_sensitive_key"]

#: What a hidden value is replaced with.
REDACTED = "***"

# Deepest nesting of shell text we read (sh -c "ssh h 'bash -c \"...\"'"): beyond it the
# element is left as the single-element rules saw it.
_MAX_DEPTH = 4


class RedactPatternError(ValueError):
    """A ``--redact`` regex does not compile. ``pattern`` is the offending text."""

    def __init__(self, pattern: str, error: re.error) -> None:
        super().__init__(f"invalid --redact pattern {pattern!r}: {error}")
        self.pattern = pattern


class Redactor:
    """Hides secrets in a command line: ``redact(argv) -> argv``.

    Build once at start-up from ``--redact`` (``extra_patterns``; a bad regex raises
    ``RedactPatternError``) and ``--no-cmdline`` (``drop_cmdline``), then call it — the
    instance itself is the callable ``EventBuilder`` takes — once per process.
    ``enabled=False`` turns the default rules off; the extra patterns still apply, since
    they were asked for by name. Holds nothing but compiled patterns, so it is safe to share
    between threads.
    """

    __slots__ = ("_extra", "_enabled", "_drop", "_use_hint")

    def __init__(
        self,
        extra_patterns: Sequence[str] = (),
        *,
        enabled: bool = True,
        drop_cmdline: bool = False,
    ) -> None:
        compiled: list[re.Pattern[str]] = []
        for pattern in extra_patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise RedactPatternError(pattern, exc) from None
        self._extra: tuple[re.Pattern[str], ...] = tuple(compiled)
        self._enabled = enabled
        self._drop = drop_cmdline
        # Tests turn the pre-filter off to check that it never changes a result.
        self._use_hint = True

    @property
    def enabled(self) -> bool:
        """Whether the default rules run (``--redact`` patterns always do)."""
        return self._enabled

    @property
    def drop_cmdline(self) -> bool:
        """Whether command lines are dropped altogether (``--no-cmdline``)."""
        return self._drop

    def redact(self, cmdline: tuple[str, ...]) -> tuple[str, ...]:
        """The command line with secrets replaced by ``***`` (``()`` with ``drop_cmdline``).

        The user's patterns see the original text first; then the default rules read the
        result. Call once per process and keep the result.
        """
        if self._drop:
            return ()
        if not cmdline:
            return tuple(cmdline)
        out = tuple(cmdline)
        if self._extra:
            out = tuple(self._apply_extra(element) for element in out)
        if self._enabled and (not self._use_hint or _has_hint("\0".join(out).lower())):
            out = tuple(_read_words(out, 0))
        return out

    __call__ = redact

    def _apply_extra(self, element: str) -> str:
        for rx in self._extra:
            element = rx.sub(_extra_replacer(rx), element)
        return element


# ---------------------------------------------------------------------------------------
# Keys

# A part equal to one of these makes a key sensitive.
_WORDS = frozenset(
    {
        "password", "passwd", "pass", "pwd", "passphrase", "secret", "secrets", "token",
        "auth", "authorization", "credential", "credentials", "apikey", "accesskey",
        "secretkey", "privatekey", "cookie", "bearer",
    }
)
# A part ending with one of these does too (PGPASSWORD, keyStorePassword, authToken,
# requirepass, masterauth, clientSecret).
_GLUED = (
    "password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "auth",
    "credential", "credentials", "apikey", "accesskey", "secretkey", "privatekey",
)
# Parts that end like a secret word but are not one.
_GLUED_EXCEPTIONS = frozenset(
    {
        "bypass", "compass", "multipass", "onepass", "twopass", "firstpass", "secondpass",
        "askpass", "nopass", "anyauth", "noauth", "preauth", "oldpwd",
    }
)
# ``key`` is a secret after these (api-key, access_key, private.key, encryption-key ...);
# ``--key`` alone is usually a file (curl --key, ssh -i).
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "secret", "private", "encryption", "signing", "master", "session"}
)
# A last part that names something *about* the secret (where it is, what kind, how long
# it lives), not the secret: --password-file, --token-ttl, --auth-url, --api-key-id.
_DESCRIPTORS = frozenset(
    {
        "file", "files", "path", "paths", "dir", "directory", "env", "var", "name", "names",
        "id", "ids", "type", "kind", "mode", "method", "methods", "ttl", "timeout", "expiry",
        "expires", "expiration", "lifetime", "length", "len", "size", "limit", "count",
        "min", "max", "stdin", "fd", "prompt", "cmd", "command", "helper", "program",
        "url", "uri", "endpoint", "host", "hostname", "port", "user", "username", "policy",
        "provider", "plugin", "backend", "source", "level", "required", "enabled",
        "disabled", "version", "format", "header", "algorithm", "algo", "store", "cache",
        "db", "table", "field", "column", "scope", "scopes", "issuer", "audience", "realm",
        "jar",
    }
)
# A first part that turns the key into a switch: --no-password, --ask-pass.
_SWITCH_VERBS = frozenset(
    {
        "no", "ask", "prompt", "without", "skip", "disable", "enable", "show", "print",
        "require", "force", "generate", "gen", "read", "use", "allow", "deny", "reset",
        "change", "forget", "check", "verify", "validate", "rotate", "renew", "refresh",
    }
)
# The shell's working directory variables, not passwords.
_NOT_SECRET = frozenset({"pwd", "oldpwd"})
_PARTS = re.compile(r"[-_.]+")


@lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """True when ``key`` (``--db-password``, ``PGPASSWORD``, ``api_key``) names a secret.

    Leading dashes are ignored; ``-Dname`` (a Java system property) is read as ``name``.
    Cached: keys repeat across processes.
    """
    bare = key.lstrip("-")
    if key.startswith("-D") and not key.startswith("--") and len(bare) > 1:
        bare = bare[1:]
    low = bare.lower()
    if not low or (low in _NOT_SECRET and not key.startswith("-")):
        return False
    parts = [p for p in _PARTS.split(low) if p]
    if not parts:
        return False
    if len(parts) > 1 and parts[0] in _SWITCH_VERBS:
        return False
    last_hit = -1
    for i, part in enumerate(parts):
        if part in _WORDS or (part.endswith(_GLUED) and part not in _GLUED_EXCEPTIONS):
            last_hit = i
        elif part == "key" and i > 0 and parts[i - 1] in _KEY_QUALIFIERS:
            last_hit = i
    if last_hit < 0:
        return False
    return not (last_hit < len(parts) - 1 and parts[-1] in _DESCRIPTORS)


# ---------------------------------------------------------------------------------------
# Tools whose short flags carry secrets


@dataclass(frozen=True, slots=True)
class _Tool:
    #: the value (next element, or glued to a short flag / after ``=``) is a secret
    secret: frozenset[str] = frozenset()
    #: the value is a secret only when glued (``mysql -pSECRET``)
    glued: frozenset[str] = frozenset()
    #: the value is ``user:password``; the user is kept
    userpass: frozenset[str] = frozenset()
    #: openssl pass phrase arguments: ``pass:SECRET`` is hidden, ``env:``/``file:`` kept
    passarg: frozenset[str] = frozenset()
    #: the flags above count only after these words (``docker login -p``)
    after: tuple[str, ...] = ()
    #: after these words, a positional sensitive key makes the next word a secret
    #: (``aws configure set aws_secret_access_key X``)
    setting_after: tuple[str, ...] | None = None
    #: whether a short flag may carry its value glued (getopt's ``-pVALUE``); not for
    #: tools with single-dash long options (openssl's ``-key`` is not ``-k`` + ``ey``)
    glue: bool = True


def _f(*flags: str) -> frozenset[str]:
    return frozenset(flags)


_MYSQL = _Tool(glued=_f("-p"))
_LOGIN = _Tool(secret=_f("-p"), after=("login",))
_MONGO = _Tool(secret=_f("-p"))
_LDAP = _Tool(secret=_f("-w"))
_SQLCMD = _Tool(secret=_f("-P"))
_SNMP = _Tool(secret=_f("-c", "-A", "-X"))
_CONFIG_SET = _Tool(setting_after=("config", "set"))

_TOOLS: dict[str, _Tool] = {
    **dict.fromkeys(
        ("mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck",
         "mysqlpump", "mysqlbinlog", "mysqlslap", "mariadb", "mariadb-dump",
         "mariadb-admin", "mariadb-import", "mariadb-show", "mariadb-check",
         "mariadb-binlog", "mariadb-slap"),
        _MYSQL,
    ),
    "sshpass": _Tool(secret=_f("-p")),
    **dict.fromkeys(("docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras"),
                    _LOGIN),
    "curl": _Tool(
        secret=_f("--pass", "--oauth2-bearer", "--proxy-pass"),
        userpass=_f("-u", "--user", "-U", "--proxy-user"),
    ),
    "redis-cli": _Tool(secret=_f("-a", "--pass")),
    **dict.fromkeys(
        ("mongo", "mongosh", "mongodump", "mongorestore", "mongoexport", "mongoimport",
         "mongostat", "mongotop", "mongofiles"),
        _MONGO,
    ),
    "openssl": _Tool(secret=_f("-k"), passarg=_f("-passin", "-passout", "-pass"), glue=False),
    "ssh-keygen": _Tool(secret=_f("-N", "-P")),
    **dict.fromkeys(
        ("ldapsearch", "ldapmodify", "ldapadd", "ldapdelete", "ldapmodrdn", "ldapcompare",
         "ldapwhoami", "ldapexop", "ldapurl"),
        _LDAP,
    ),
    "ldappasswd": _Tool(secret=_f("-w", "-a", "-s")),
    **dict.fromkeys(("sqlcmd", "bcp", "osql"), _SQLCMD),
    **dict.fromkeys(
        ("snmpget", "snmpgetnext", "snmpwalk", "snmpbulkwalk", "snmpbulkget", "snmpset",
         "snmptable", "snmptrap", "snmpinform", "snmpdelta", "snmpdf", "snmpstatus",
         "snmptest", "snmpnetstat", "snmpusm", "snmpvacm"),
        _SNMP,
    ),
    "aws": _Tool(setting_after=("configure", "set")),
    **dict.fromkeys(("npm", "yarn", "pnpm"), _CONFIG_SET),
    "git": _Tool(setting_after=("config",)),
}

# Commands that run another command: the next word names the real tool.
_WRAPPERS = frozenset(
    {"env", "sudo", "doas", "nohup", "exec", "nice", "ionice", "time", "timeout", "stdbuf",
     "setsid", "chrt", "taskset", "command", "builtin", "xargs", "watch", "strace", "ltrace",
     "torsocks", "proxychains", "proxychains4", "unbuffer", "flock", "runuser", "chroot"}
)
# Interpreters: the first non-option word is the script, whose name is the tool.
_INTERPRETER = re.compile(r"^(?:python[\d.]*|pypy[\d.]*|node|nodejs|perl[\d.]*|ruby[\d.]*|php[\d.]*)$")
_SCRIPT_SUFFIX = re.compile(r"\.(?:py|js|mjs|cjs|pl|rb|php)$")
# Words that end one command in shell text.
_SEPARATORS = frozenset({";", "&&", "||", "|", "|&", "&", "(", ")", "{", "}", "!", "then",
                         "do", "else", "elif", "if", "while", "until", "$(", "`"})

# ---------------------------------------------------------------------------------------
# Element-level patterns

# ``--key=value``, ``-Dkey=value``, ``--key:value``, ``KEY=value`` at the start of an element.
_ASSIGN = re.compile(r"(?P<dashes>-{0,2})(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>[=:])", re.S)
# ``Name: value`` (an HTTP header as a curl -H argument).
_HEADER = re.compile(r"(?P<name>[A-Za-z][\w\-]*)[ \t]*:[ \t]*(?P<value>.*)", re.S)
_HEADER_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][\w.\-]*)(?P<ws>\s+)\S", re.S)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SCHEME_HEADERS = frozenset({"authorization", "proxy-authorization"})
# An Authorization header inside a longer text (git -c http.extraHeader="Authorization: ...").
_EMBEDDED_AUTH = re.compile(
    r"(?<![\w-])(?P<head>(?:proxy-)?authorization[ \t]*:[ \t]*"
    r"(?:(?:basic|bearer|token|digest|negotiate|ntlm|apikey|aws4-hmac-sha256)[ \t]+)?)"
    r"(?P<value>[^\s'\"]+)",
    re.I,
)
# ``scheme://userinfo@`` — greedy userinfo, so the last ``@`` before the host wins.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"]*)@")
# ``key=value`` anywhere in a text; the value stops at a separator or is a quoted string.
_EMBEDDED_KV = re.compile(
    r"(?<![\w.\-])(?P<key>-{0,2}[A-Za-z_][\w.\-]*)="
    r"(?P<value>\"[^\"\\]*(?:\\.[^\"\\]*)*\"?|'[^']*'?|[^\s&;,'\"|)]*)",
    re.S,
)
# One shell word: runs of plain characters, quoted strings and escapes.
# (Quoted strings are written as unrolled loops, "[^"\\]*(?:\\.[^"\\]*)*", which don't
# backtrack per character on long texts as an alternation would.)
# Control operators (; && | & ( )) are words of their own, as the shell reads them, so
# ``echo hi; mysql -pX`` starts a new command at ``mysql``.
_SHELL_WORD = re.compile(
    r"""(?:[^\s'"\\;&|()]+|\\.|\\$|'[^']*(?:'|$)|"[^"\\]*(?:\\.[^"\\]*)*(?:"|$))+"""
    r"""|[;&|()]+""",
    re.S,
)
_OPERATOR = re.compile(r"[;&|()]+")
_UNQUOTE = re.compile(r"""'([^']*)'?|"([^"\\]*(?:\\.[^"\\]*)*)"?|\\(.)""", re.S)
_BACKSLASH = re.compile(r"\\(.)", re.S)
_ENV_ASSIGN = re.compile(r"[A-Za-z_]\w*=")
_OPTION = re.compile(r"-{1,2}[A-Za-z][\w.\-]*")
_SPACE = re.compile(r"\s")


def _unquote(word: str) -> str:
    """What the shell would pass for ``word`` (quotes and escapes removed)."""
    if "'" not in word and '"' not in word and "\\" not in word:
        return word

    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        if m.group(2) is not None:
            return _BACKSLASH.sub(r"\1", m.group(2))
        return m.group(3)

    return _UNQUOTE.sub(repl, word)


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1].lower()


def _looks_like_option(word: str) -> bool:
    return len(word) > 1 and word.startswith("-")


def _userpass(value: str) -> str:
    user, sep, _ = value.partition(":")
    return f"{user}:{REDACTED}" if sep else value


def _passarg(value: str) -> str:
    return f"pass:{REDACTED}" if value.startswith("pass:") else value


# A cheap pre-filter, searched in the lower-cased command line: one that contains none of
# these has nothing any default rule would touch (most command lines: daemons, kernel
# threads, editors), and skips the word-by-word reading. Every secret word and every tool
# name of ``_TOOLS`` contains one of them (a test checks it). Lower-casing once and a
# case-sensitive search cost far less than ``re.I`` on a long alternation.
_HINT_STEMS = (
    "pass", "pwd", "secret", "token", "key", "auth", "credential", "cookie", "@", "login",
    "mysql", "mariadb", "curl", "redis", "mongo", "openssl", "ldap", "sqlcmd", "bcp", "osql",
    "snmp", "bearer",
)


_HINT = re.compile("|".join(re.escape(stem) for stem in _HINT_STEMS))


def _has_hint(lowered: str) -> bool:
    # One regex search wins on short texts; ``in`` (memchr underneath) scans far faster per
    # character, so it wins on long ones (classpaths, JSON in argv) despite one call a stem.
    if len(lowered) < 256:
        return _HINT.search(lowered) is not None
    return any(stem in lowered for stem in _HINT_STEMS)


# ---------------------------------------------------------------------------------------
# Reading a command
#
# A command line is read word by word, the way its program parses it: argv elements at the
# top, shell words inside an element that holds a whole command (sh -c "..."). The reader
# is in one of four phases:
#
#   COMMAND  the next word names the command (VAR=value words before it are skipped)
#   WRAPPED  after env, sudo, timeout...: their options and durations, then the command
#   SCRIPT   after an interpreter (python3, node...): its options, then the script, whose
#            name stands for the command (python3 /usr/local/bin/aws)
#   ARGS     the command's arguments
#
# and it may expect the next word to be a value (of --password, or of a tool's -p). Each
# word goes to the first rule that takes it:
#
#   1. In shell text, an operator or keyword (; && | then ...) ends the command: back to
#      COMMAND, nothing expected.
#   2. In ARGS, with no tool rules in play and no value expected, a word without a hint
#      stem is kept as it is: nothing below could change it, and long harmless texts (JSON
#      in argv, classpaths) stay cheap.
#   3. An expected value is hidden, unless it looks like an option and the flag before it
#      may be a plain switch (psql --password -h db).
#   4. In COMMAND, WRAPPED and SCRIPT: the phase rules above.
#   5. A flag of the command's tool hides its value, glued (mysql -pSECRET) or in the next
#      word (sshpass -p SECRET); a setting's key makes the next word a value (aws configure
#      set aws_secret_access_key SECRET).
#   6. An option whose name is a sensitive key (--token) makes the next word a value.
#   7. Anything else is one element, read on its own (``_read_element``).


class _Phase(enum.Enum):
    COMMAND = enum.auto()
    WRAPPED = enum.auto()
    SCRIPT = enum.auto()
    ARGS = enum.auto()


@dataclass(frozen=True, slots=True)
class _Value:
    """The next word is the value of this one: what is shown of it."""

    #: the value (unquoted) -> what is shown
    shown: Callable[[str], str]
    #: taken even when it looks like an option: a tool's flag always has a value
    always: bool


def _hidden(value: str) -> str:
    return REDACTED


_SECRET = _Value(_hidden, always=True)
_USER_PASS = _Value(_userpass, always=True)
_PASS_ARG = _Value(_passarg, always=True)
_SECRET_UNLESS_OPTION = _Value(_hidden, always=False)

# Interpreter options after which code, not a script, comes next.
_INLINE_CODE = frozenset({"-c", "-e", "-E", "-m"})


def _read_words(words: Sequence[str], depth: int) -> list[str]:
    """``words`` (argv, or the words of one shell text) with secrets hidden."""
    reader = _CommandReader(depth)
    return [reader.read(raw) for raw in words]


class _CommandReader:
    """The phase and expectations while reading one sequence of words (rules above)."""

    __slots__ = ("depth", "phase", "tool", "seen", "expect")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._new_command()

    def _new_command(self) -> None:
        self.phase = _Phase.COMMAND
        #: the rules of the command's tool, when it has some
        self.tool: _Tool | None = None
        #: the command's words so far, for rules that need a subcommand (docker login)
        self.seen: set[str] = set()
        #: what becomes of the next word, when the previous one takes a value
        self.expect: _Value | None = None

    def read(self, raw: str) -> str:
        """What is shown of ``raw``, the next word."""
        if self.depth and (raw in _SEPARATORS or _OPERATOR.fullmatch(raw)):  # rule 1
            self._new_command()
            return raw
        if (  # rule 2
            self.phase is _Phase.ARGS
            and self.tool is None
            and self.expect is None
            and _HINT.search(raw.lower()) is None
        ):
            return raw
        # argv elements are what the program got; only words of a shell text are quoted
        word = _unquote(raw) if self.depth else raw
        expect, self.expect = self.expect, None
        if expect is not None and (expect.always or not _looks_like_option(word)):  # rule 3
            return expect.shown(word)
        if self.phase is _Phase.COMMAND or self.phase is _Phase.WRAPPED:  # rule 4
            return self._command(raw, word)
        if self.phase is _Phase.SCRIPT:
            shown = self._script(raw, word)
            if shown is not None:
                return shown
        return self._argument(raw, word)

    def _command(self, raw: str, word: str) -> str:
        shown = _read_element(raw, self.depth)
        if _ENV_ASSIGN.match(word):
            return shown  # VAR=value before the command
        if self.phase is _Phase.WRAPPED and (_looks_like_option(word) or word[:1].isdigit()):
            return shown  # options and durations of sudo/timeout/nice
        name = _basename(word)
        if name in _WRAPPERS:
            self.phase = _Phase.WRAPPED
            return shown
        self.phase = _Phase.SCRIPT if _INTERPRETER.match(name) else _Phase.ARGS
        self.tool = _TOOLS.get(name)
        self.seen = set()
        return shown

    def _script(self, raw: str, word: str) -> str | None:
        """An interpreter's word; None when it is to be read as an argument as well."""
        if word in _INLINE_CODE:
            self.phase = _Phase.ARGS
            return None
        if word.startswith("-"):
            return None  # an option of the interpreter
        self.phase = _Phase.ARGS
        self.tool = _TOOLS.get(_SCRIPT_SUFFIX.sub("", _basename(word)))
        self.seen = set()
        return _read_element(raw, self.depth)

    def _argument(self, raw: str, word: str) -> str:
        tool = self.tool
        if tool is not None and all(w in self.seen for w in tool.after):  # rule 5
            if tool.setting_after is not None:
                if _is_setting_key(tool.setting_after, word, self.seen):
                    self.expect = _SECRET_UNLESS_OPTION
                    return _read_element(raw, self.depth)
            else:
                flag = _flag(tool, word)
                if isinstance(flag, str):
                    return flag
                if flag is not None:
                    self.expect = flag
                    return raw
        if _OPTION.fullmatch(word) and is_sensitive_key(word):  # rule 6
            self.expect = _SECRET_UNLESS_OPTION
            return raw
        if tool is not None:
            self.seen.add(word)
        return _read_element(raw, self.depth)  # rule 7


def _flag(tool: _Tool, word: str) -> _Value | str | None:
    """``word`` as one of ``tool``'s secret flags: what becomes of the next word when the
    flag stands alone, the word with its value hidden when the value is glued to it, or
    None when it is no such flag."""
    if word in tool.secret:
        return _SECRET
    if word in tool.userpass:
        return _USER_PASS
    if word in tool.passarg:
        return _PASS_ARG
    for flags, shown in ((tool.secret | tool.glued, _hidden), (tool.userpass, _userpass)):
        for flag in flags:
            if not word.startswith(flag) or len(word) == len(flag):
                continue
            rest = word[len(flag):]
            if flag.startswith("--"):
                if not rest.startswith("="):
                    continue  # --pass=X, not --passphrase
                flag, rest = flag + "=", rest[1:]
            elif len(flag) != 2 or not tool.glue:
                continue  # only getopt's one-letter flags take a glued value
            return flag + shown(rest)
    return None


def _is_setting_key(after: tuple[str, ...], word: str, seen: set[str]) -> bool:
    """Whether ``word`` is a sensitive key in ``TOOL ...after... KEY VALUE``; the key's
    last part counts (``//registry.npmjs.org/:_authToken``, ``credential.password``)."""
    return (
        all(w in seen for w in after)
        and not word.startswith("-")
        and "=" not in word
        and is_sensitive_key(re.split(r"[/:]", word)[-1])
    )


# ---------------------------------------------------------------------------------------
# One element


def _read_element(s: str, depth: int) -> str:
    """One argv element (or shell word) on its own: ``--key=value`` and ``KEY=value``,
    an HTTP header, a quoted string, URL credentials, ``key=value`` and ``Authorization:``
    inside a longer text, and finally, when it holds spaces, shell text."""
    if depth > _MAX_DEPTH or not s:
        return s
    has_space = _SPACE.search(s) is not None
    m = _ASSIGN.match(s)
    if m is not None:
        dashes, key, sep = m.group("dashes"), m.group("key"), m.group("sep")
        # an element starting with a dash is one option even when it holds spaces
        one_option = bool(dashes) or not has_space
        if (sep == "=" or dashes) and one_option:
            if is_sensitive_key(dashes + key):
                return s[: m.end()] + REDACTED
            # --header=..., --env=K=V, -Dhttp.proxy=URL: read the value on its own
            return s[: m.end()] + _read_element(s[m.end():], depth + 1)
    h = _HEADER.fullmatch(s)
    if h is not None:
        name = h.group("name").lower()
        if name in _SECRET_HEADERS or is_sensitive_key(name):
            value = h.group("value")
            start = h.start("value")
            if name in _SCHEME_HEADERS:
                sm = _HEADER_SCHEME.match(value)
                if sm is not None:
                    start += sm.end("ws")  # keep "Bearer ": it tells what kind of secret
            return s[:start] + REDACTED
    if len(s) >= 2 and s[0] in "'\"" and s[-1] == s[0]:
        return s[0] + _read_element(s[1:-1], depth + 1) + s[0]
    if "://" in s:
        s = _URL_USERINFO.sub(_url_replacer, s)
    if "=" in s:
        s = _EMBEDDED_KV.sub(_kv_replacer, s)
    if has_space:
        if "authorization" in s.lower():
            s = _EMBEDDED_AUTH.sub(r"\g<head>" + REDACTED, s)
        if depth < _MAX_DEPTH and _has_hint(s.lower()):
            s = _read_shell_text(s, depth)
    return s


def _read_shell_text(s: str, depth: int) -> str:
    """``s`` read as shell text: split into words, read as a command, spliced back
    (everything between words — spaces, stray characters — is kept as is)."""
    matches = list(_SHELL_WORD.finditer(s))
    if not matches:
        return s
    new = _read_words([m.group(0) for m in matches], depth + 1)
    pieces: list[str] = []
    last = 0
    for m, word in zip(matches, new):
        pieces.append(s[last:m.start()])
        pieces.append(word)
        last = m.end()
    pieces.append(s[last:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------
# Replacements


def _url_replacer(m: re.Match[str]) -> str:
    userinfo = m.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    if not sep:
        return m.group(0)
    return f"{m.group('scheme')}{user}:{REDACTED}@"


def _kv_replacer(m: re.Match[str]) -> str:
    if is_sensitive_key(m.group("key")):
        return f"{m.group('key')}={REDACTED}"
    return m.group(0)


def _extra_replacer(rx: re.Pattern[str]) -> Callable[[re.Match[str]], str]:
    if rx.groups == 0:
        return lambda m: REDACTED if m.end() > m.start() else m.group(0)

    def replace_group(m: re.Match[str]) -> str:
        whole = m.group(0)
        a, b = m.span(1)
        if a < 0 or a == b:
            return whole
        base = m.start()
        return whole[: a - base] + REDACTED + whole[b - base:]

    return replace_group
