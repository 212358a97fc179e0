"""Hide secrets in command lines before they leave the process (DESIGN §8).

A ``Redactor`` is built once from the CLI flags (``--redact REGEX``, ``--no-cmdline``) and
applied once per process, when the process is first reported; ``EventBuilder`` caches the
result, so every event, the snapshot, the metrics and the event log carry the same
redacted ``cmdline``. ``Redactor`` is a plain callable ``tuple[str, ...] -> tuple[str, ...]``
and holds no state besides its compiled patterns, so it is safe to share between threads.

What counts as a secret (all case-insensitive; the value is replaced by ``***``):

- **Keys.** A key is sensitive when one of its parts (split on ``-``, ``_``, ``.``) is, or
  ends with, ``password``, ``passwd``, ``pass``, ``pwd``, ``passphrase``, ``secret``,
  ``token``, ``auth``, ``authorization``, ``credential(s)``, ``apikey``, ``accesskey``,
  ``secretkey``, ``privatekey``; or is ``key`` after ``api``, ``access``, ``private``,
  ``encryption``, ``signing``, ``master``, ``session``. So ``PGPASSWORD``, ``MYSQL_PWD``,
  ``AWS_SECRET_ACCESS_KEY``, ``--client-secret``, ``-Djavax.net.ssl.keyStorePassword``,
  ``keytool -storepass`` and ``redis-server --requirepass`` all are. Not sensitive:
  a key whose *last* part names something about the secret rather than the secret itself
  (``--password-file``, ``--token-ttl``, ``--auth-type``, ``--os-auth-url``,
  ``--password-stdin``, ``--api-key-id``); keys starting with a verb that makes them a
  boolean switch (``--no-password``, ``--ask-pass``, ``--prompt-password``); plurals that
  mean something else (``--max-tokens``); the shell's own ``PWD``/``OLDPWD``; and the
  booleans ``--anyauth``, ``--noauth``, ``--askpass``, ``--bypass``.
- **Forms.** ``--key=value`` → ``--key=***`` and ``--key:value`` → ``--key:***`` (the
  value runs to the end of the element); ``KEY=value`` (env style, also inside a longer
  element: ``a=1,db.password=x``, ``?token=x&y=1``, where the value stops at ``&;,``
  or a space) → ``KEY=***``; ``--key value`` (value in the next argv element) → ``--key ***``, unless
  the next element looks like an option (``-x``): ``psql --password -h db`` uses
  ``--password`` as a switch. ``scheme://user:pass@host`` → ``scheme://user:***@host``
  (a lone ``user@`` is kept: it is usually ``git@`` or ``ssh://root@``). HTTP headers
  ``Authorization: Bearer x`` → ``Authorization: Bearer ***`` (scheme kept),
  ``Cookie: ...``, ``X-Api-Key: ...``, ``Private-Token: ...`` → value hidden.
- **Tools with short flags.** Short flags mean different things to different tools
  (``-p`` is a port for ssh and docker run, a parent switch for mkdir), so they are only
  read for the tools that use them for secrets, recognised by the command's basename
  (also after ``env``/``sudo``/``nohup``... and after an interpreter: ``python3 /usr/bin/aws``):
  mysql/mariadb family ``-pSECRET`` (glued only: ``-p`` alone prompts, and ``-p db``
  names a database), ``sshpass -p``, ``docker|podman|nerdctl|helm|skopeo login -p``,
  ``curl -u/--user/-U/--proxy-user user:pass`` → ``user:***`` (and ``--pass``,
  ``--oauth2-bearer``), ``redis-cli -a``, ``mongo*/mongosh -p``, ``openssl -k`` and
  ``-passin/-passout/-pass pass:x`` → ``pass:***`` (openssl's single-dash long options
  are never read as glued short flags), ``ssh-keygen -N/-P``, ``ldap* -w``
  (and ``ldappasswd -a/-s``), ``sqlcmd/bcp/osql -P``, ``snmp* -c/-A/-X``; positional
  settings ``aws configure set aws_secret_access_key X``, ``npm|yarn|pnpm config set
  //registry/:_authToken X``, ``git config x.password X``.
- **Shell text.** An element holding a whole command (``sh -c "PGPASSWORD=x psql ..."``,
  ``ssh host 'curl --token x ...'``) is split into shell words — ``;``, ``&&``, ``|``
  start a new command — and read with the same rules, recursively (quotes kept, up to 4
  levels deep). An element starting with a dash
  is one option even when it holds spaces (``--password=two words`` → ``--password=***``).

``extra_patterns`` (``--redact REGEX``) are applied to every element before the default
rules: each match is replaced by ``***``, or only its group 1 when the regex has groups.
``enabled=False`` turns the default rules off; the extra patterns still apply (they were
asked for by name). ``drop_cmdline=True`` drops command lines altogether.

These are heuristics: they favour hiding a harmless value over showing a secret, and a
secret in a place no rule knows (a positional argument, ``-p`` of an unknown tool, a
value starting with ``-`` after ``--password``, ``sudo -u postgres mysql -p...`` where the
wrapper's option value hides the tool) stays visible: add a ``--redact`` pattern for it,
or use ``--no-cmdline``.

Cost: a command line with none of the hint stems (most of them) costs one lower-case and
one regex search (~0.5 µs); one with secrets ~5-15 µs; a 1.5 KB JSON blob in argv with a
stem ~100 µs. Once per process, on the poller's worker thread.
"""

from __future__ import annotations

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
# (Quoted strings are written as unrolled loops, "[^"\\]*(?:\\.[^"\\]*)*": several times
# faster than an alternation per character on long texts.)
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
# name of ``_TOOLS`` contains one of them (a test checks it). Lower-casing first and a
# case-sensitive search is ~8x faster than ``re.I`` on a long alternation.
_HINT_STEMS = (
    "pass", "pwd", "secret", "token", "key", "auth", "credential", "cookie", "@", "login",
    "mysql", "mariadb", "curl", "redis", "mongo", "openssl", "ldap", "sqlcmd", "bcp", "osql",
    "snmp", "bearer",
)


_HINT = re.compile("|".join(re.escape(stem) for stem in _HINT_STEMS))


def _has_hint(lowered: str) -> bool:
    # The regex scans ~25 ns per character, ``in`` (memchr-based) far less: the regex wins
    # on short texts (one call), ``in`` on long ones (classpaths, JSON in argv).
    if len(lowered) < 256:
        return _HINT.search(lowered) is not None
    return any(stem in lowered for stem in _HINT_STEMS)


# ---------------------------------------------------------------------------------------


class Redactor:
    """Hide secrets in a command line; see the module docstring for the rules.

    Build once at start-up (patterns are compiled here; a bad ``--redact`` regex raises
    ``RedactPatternError``), then call ``redact(cmdline)`` — or the instance itself — once
    per process. Pure and thread-safe.
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

        Call once per process: the result is meant to be cached by the caller.
        """
        if self._drop:
            return ()
        if not cmdline:
            return tuple(cmdline)
        out = tuple(cmdline)
        if self._extra:
            out = tuple(self._apply_extra(element) for element in out)
        if self._enabled and (not self._use_hint or _has_hint("\0".join(out).lower())):
            out = tuple(self._words(list(out), 0))
        return out

    __call__ = redact

    # -- user patterns ------------------------------------------------------------------

    def _apply_extra(self, element: str) -> str:
        for rx in self._extra:
            element = rx.sub(_extra_replacer(rx), element)
        return element

    # -- a sequence of words (argv, or the words of a shell text) ------------------------

    def _words(self, words: list[str], depth: int) -> list[str]:
        out: list[str] = []
        tool: _Tool | None = None  # the tool these words belong to, when it has rules
        seen: set[str] = set()  # words after the command, for subcommand rules
        at_command = True  # the next word may name the command
        after_wrapper = False
        in_interpreter = False
        pending: Callable[[str, str], str] | None = None
        pending_forced = False
        setting_value_next = False
        for raw in words:
            if depth > 0 and (raw in _SEPARATORS or _OPERATOR.fullmatch(raw)):
                at_command, after_wrapper, in_interpreter = True, False, False
                tool, pending, setting_value_next = None, None, False
                seen = set()
                out.append(raw)
                continue
            if (
                tool is None
                and pending is None
                and not (at_command or in_interpreter or setting_value_next)
                and _HINT.search(raw.lower()) is None
            ):
                # No rule reads a word without any hint stem once no tool is in play:
                # skipping it keeps long harmless texts (JSON in argv, classpaths) cheap.
                out.append(raw)
                continue
            # argv elements are what the program got; only words of a shell text are quoted
            word = _unquote(raw) if depth else raw
            if pending is not None:
                action, forced = pending, pending_forced
                pending = None
                if forced or not _looks_like_option(word):
                    out.append(action(raw, word))
                    continue
            if setting_value_next:
                setting_value_next = False
                if not _looks_like_option(word):
                    out.append(REDACTED)
                    continue
            if at_command:
                out.append(self._element(raw, depth))
                if _ENV_ASSIGN.match(word):
                    continue  # VAR=value before the command
                base = _basename(word)
                if after_wrapper and (_looks_like_option(word) or word[:1].isdigit()):
                    continue  # options and durations of sudo/timeout/nice
                if base in _WRAPPERS:
                    after_wrapper = True
                    continue
                tool = _TOOLS.get(base)
                at_command = after_wrapper = False
                in_interpreter = bool(_INTERPRETER.match(base))
                seen = set()
                continue
            if in_interpreter:
                if word in ("-c", "-e", "-E", "-m"):
                    in_interpreter = False
                elif not word.startswith("-"):
                    in_interpreter = False
                    tool = _TOOLS.get(_SCRIPT_SUFFIX.sub("", _basename(word)))
                    seen = set()
                    out.append(self._element(raw, depth))
                    continue
            if tool is not None:
                handled = self._tool_word(tool, raw, word, seen)
                if handled is not None:
                    kind, text = handled
                    if text is not None:
                        out.append(text)
                        continue
                    if kind == "setting":
                        setting_value_next = True
                        out.append(self._element(raw, depth))
                        continue
                    pending, pending_forced = _ACTIONS[kind], True
                    out.append(raw)
                    continue
            if _OPTION.fullmatch(word) and is_sensitive_key(word):
                pending, pending_forced = _hide_word, False
                out.append(raw)
                continue
            if tool is not None:
                seen.add(word)
            out.append(self._element(raw, depth))
        return out

    def _tool_word(
        self, tool: _Tool, raw: str, word: str, seen: set[str]
    ) -> tuple[str, str | None] | None:
        """A tool-specific reading of ``word``: ``(kind, replacement)`` where a ``None``
        replacement means "the next word is the value"; ``None`` when no rule applies."""
        if tool.after and not all(a in seen for a in tool.after):
            return None
        if tool.setting_after is not None:
            if all(a in seen for a in tool.setting_after) and not word.startswith("-"):
                if "=" not in word and is_sensitive_key(re.split(r"[/:]", word)[-1]):
                    return ("setting", None)
            return None
        for kind, flags in (
            ("secret", tool.secret),
            ("userpass", tool.userpass),
            ("passarg", tool.passarg),
        ):
            if word in flags:
                return (kind, None)
        for kind, flags in (
            ("secret", tool.secret | tool.glued),
            ("userpass", tool.userpass),
        ):
            for flag in flags:
                if word.startswith(flag) and len(word) > len(flag):
                    rest = word[len(flag):]
                    if flag.startswith("--"):
                        if not rest.startswith("="):
                            continue
                        flag, rest = flag + "=", rest[1:]
                    elif len(flag) != 2 or not tool.glue:
                        continue
                    value = REDACTED if kind == "secret" else _userpass(rest)
                    return (kind, flag + value)
        return None

    # -- one element ---------------------------------------------------------------------

    def _element(self, s: str, depth: int) -> str:
        if depth > _MAX_DEPTH or not s:
            return s
        has_space = _SPACE.search(s) is not None
        m = _ASSIGN.match(s)
        if m is not None:
            dashes, key, sep = m.group("dashes"), m.group("key"), m.group("sep")
            one_option = bool(dashes) or not has_space
            if sep == "=" or dashes:
                if one_option:
                    if is_sensitive_key(dashes + key):
                        return s[: m.end()] + REDACTED
                    # --header=..., --env=K=V, -Dhttp.proxy=URL: read the value on its own
                    return s[: m.end()] + self._element(s[m.end():], depth + 1)
        h = _HEADER.fullmatch(s)
        if h is not None:
            name = h.group("name").lower()
            if name in _SECRET_HEADERS or is_sensitive_key(name):
                value = h.group("value")
                start = h.start("value")
                if name in _SCHEME_HEADERS:
                    sm = _HEADER_SCHEME.match(value)
                    if sm is not None:
                        start += sm.end("ws")
                return s[:start] + REDACTED
        if len(s) >= 2 and s[0] in "'\"" and s[-1] == s[0]:
            return s[0] + self._element(s[1:-1], depth + 1) + s[0]
        if "://" in s:
            s = _URL_USERINFO.sub(_url_replacer, s)
        if "=" in s:
            s = _EMBEDDED_KV.sub(_kv_replacer, s)
        if has_space:
            if "authorization" in s.lower():
                s = _EMBEDDED_AUTH.sub(r"\g<head>" + REDACTED, s)
            if depth < _MAX_DEPTH and _has_hint(s.lower()):
                s = self._text(s, depth)
        return s

    def _text(self, s: str, depth: int) -> str:
        """Read ``s`` as shell text: split into words, apply the word rules, splice back
        (everything between words — spaces, stray characters — is kept as is)."""
        matches = list(_SHELL_WORD.finditer(s))
        if not matches:
            return s
        new = self._words([m.group(0) for m in matches], depth + 1)
        pieces: list[str] = []
        last = 0
        for m, word in zip(matches, new):
            pieces.append(s[last:m.start()])
            pieces.append(word)
            last = m.end()
        pieces.append(s[last:])
        return "".join(pieces)


# ---------------------------------------------------------------------------------------
# Replacement helpers


def _hide_word(raw: str, word: str) -> str:
    return REDACTED


def _userpass_word(raw: str, word: str) -> str:
    return _userpass(word)


def _passarg_word(raw: str, word: str) -> str:
    return _passarg(word)


_ACTIONS: dict[str, Callable[[str, str], str]] = {
    "secret": _hide_word,
    "userpass": _userpass_word,
    "passarg": _passarg_word,
}


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
