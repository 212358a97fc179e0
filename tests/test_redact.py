"""Command-line redaction: a table of real-world command lines, then the API around it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from procstream.redact import (
    _DESCRIPTORS,
    _GLUED,
    _GLUED_EXCEPTIONS,
    _HINT_STEMS,
    _KEY_QUALIFIERS,
    _SWITCH_VERBS,
    _TOOLS,
    _WORDS,
    _WRAPPERS,
    REDACTED,
    Redactor,
    RedactPatternError,
    is_sensitive_key,
)

# (command line as a shell would split it, expected result, secrets that must not survive)
# Inputs are written in shell syntax and split with shlex, so each argv element is exactly
# what the program would see in /proc/PID/cmdline.
SECRET_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # MySQL: -pSECRET glued is the password (-p alone prompts)
    ("mysql -h db -uroot -pS3cr3t shop", "mysql -h db -uroot -p*** shop", ("S3cr3t",)),
    ("mysqldump --user=root --password=S3cr3t --all-databases",
     "mysqldump --user=root --password=*** --all-databases", ("S3cr3t",)),
    ("env MYSQL_PWD=S3cr3t mysql -h db", "env MYSQL_PWD=*** mysql -h db", ("S3cr3t",)),
    # PostgreSQL: URL credentials, conninfo strings, the env variable
    ("psql postgresql://app:S3cr3t@db.internal:5432/app",
     "psql postgresql://app:***@db.internal:5432/app", ("S3cr3t",)),
    ("psql 'host=db user=app password=S3cr3t dbname=app'",
     "psql 'host=db user=app password=*** dbname=app'", ("S3cr3t",)),
    ("env PGPASSWORD=S3cr3t pg_dump -h db app", "env PGPASSWORD=*** pg_dump -h db app", ("S3cr3t",)),
    ("redis-cli -u redis://:S3cr3t@cache:6379/0 ping",
     "redis-cli -u redis://:***@cache:6379/0 ping", ("S3cr3t",)),
    ("mongosh mongodb+srv://admin:S3cr3t@cluster0.example.net/admin",
     "mongosh mongodb+srv://admin:***@cluster0.example.net/admin", ("S3cr3t",)),
    # curl: user:password keeps the user; headers keep the scheme
    ("curl -u alice:S3cr3t https://api.example.com/v1",
     "curl -u alice:*** https://api.example.com/v1", ("S3cr3t",)),
    ("curl -ualice:S3cr3t https://api.example.com/v1",
     "curl -ualice:*** https://api.example.com/v1", ("S3cr3t",)),
    ("curl -sS -H 'Authorization: Bearer eyJhbGciOi.abc' https://api.example.com",
     "curl -sS -H 'Authorization: Bearer ***' https://api.example.com", ("eyJhbGciOi",)),
    ("curl --header 'X-Api-Key: 9f8e7d6c' https://api.example.com",
     "curl --header 'X-Api-Key: ***' https://api.example.com", ("9f8e7d6c",)),
    ("wget '--header=Authorization: token ghp_abc123' https://x",
     "wget '--header=Authorization: token ***' https://x", ("ghp_abc123",)),
    # AWS: the CLI is a Python script, so /proc shows the interpreter first
    ("/usr/bin/python3 /usr/local/bin/aws configure set aws_secret_access_key wJalrXUtnFEMI",
     "/usr/bin/python3 /usr/local/bin/aws configure set aws_secret_access_key ***",
     ("wJalrXUtnFEMI",)),
    ("env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI aws s3 ls",
     "env AWS_SECRET_ACCESS_KEY=*** aws s3 ls", ("wJalrXUtnFEMI",)),
    # Docker
    ("docker login -u bob -p S3cr3t registry.example.com",
     "docker login -u bob -p *** registry.example.com", ("S3cr3t",)),
    ("docker run -d -p 8080:80 -e DB_PASSWORD=S3cr3t --env=API_TOKEN=tok123 app:1",
     "docker run -d -p 8080:80 -e DB_PASSWORD=*** --env=API_TOKEN=*** app:1", ("S3cr3t", "tok123")),
    # Java system properties, keytool
    ("java -Djavax.net.ssl.keyStorePassword=changeit -Dspring.datasource.password=S3cr3t -jar app.jar",
     "java -Djavax.net.ssl.keyStorePassword=*** -Dspring.datasource.password=*** -jar app.jar",
     ("changeit", "S3cr3t")),
    ("keytool -importkeystore -srcstorepass S3cr3t -deststorepass 0ther",
     "keytool -importkeystore -srcstorepass *** -deststorepass ***", ("S3cr3t", "0ther")),
    # a whole shell command in one argv element
    ("sh -c 'curl --token abc123 https://x && echo done'",
     "sh -c 'curl --token *** https://x && echo done'", ("abc123",)),
    ("bash -c \"PGPASSWORD='two words' pg_dump -h db app | gzip > /tmp/app.gz\"",
     "bash -c 'PGPASSWORD=*** pg_dump -h db app | gzip > /tmp/app.gz'", ("two words",)),
    ("ssh backup@host 'echo start; mysql -uroot -p\"S3 cr3t\" -e \"show databases\"'",
     "ssh backup@host 'echo start; mysql -uroot -p*** -e \"show databases\"'", ("S3 cr3t", "cr3t")),
    # other tools and forms
    ("sshpass -p S3cr3t ssh admin@10.0.0.5", "sshpass -p *** ssh admin@10.0.0.5", ("S3cr3t",)),
    ("git clone https://x-access-token:ghp_abc123@github.com/org/repo.git",
     "git clone https://x-access-token:***@github.com/org/repo.git", ("ghp_abc123",)),
    ("redis-server --port 6380 --requirepass S3cr3t --masterauth 0ther",
     "redis-server --port 6380 --requirepass *** --masterauth ***", ("S3cr3t", "0ther")),
    ("openssl enc -aes-256-cbc -k S3cr3t -passin pass:0ther -passout env:PW -in a -out b",
     "openssl enc -aes-256-cbc -k *** -passin pass:*** -passout env:PW -in a -out b",
     ("S3cr3t", "0ther")),
    ("ldapsearch -x -H ldap://dc -D cn=admin,dc=ex -w S3cr3t -b dc=ex",
     "ldapsearch -x -H ldap://dc -D cn=admin,dc=ex -w *** -b dc=ex", ("S3cr3t",)),
    ("helm upgrade app ./chart --set image.tag=1.2,db.password=S3cr3t",
     "helm upgrade app ./chart --set image.tag=1.2,db.password=***", ("S3cr3t",)),
    ("kubectl create secret generic db --from-literal=password=S3cr3t",
     "kubectl create secret generic db --from-literal=password=***", ("S3cr3t",)),
    ("npm config set //registry.npmjs.org/:_authToken npm_abc123",
     "npm config set //registry.npmjs.org/:_authToken ***", ("npm_abc123",)),
    ("gpg --batch --passphrase S3cr3t -d backup.gpg", "gpg --batch --passphrase *** -d backup.gpg",
     ("S3cr3t",)),
    ("app --token:abc123 --api-key xyz789 --client-secret=s3 --auth alice:pw",
     "app --token:*** --api-key *** --client-secret=*** --auth ***", ("abc123", "xyz789", "s3", "pw")),
    ("app --password='with spaces'", "app --password=***", ("with spaces", "spaces")),
    ("oauth2-proxy https://example.com/cb?code=1&access_token=abc123&state=x",
     "oauth2-proxy 'https://example.com/cb?code=1&access_token=***&state=x'", ("abc123",)),
    ("sqlcmd -S db -U sa -P S3cr3t -Q 'select 1'", "sqlcmd -S db -U sa -P *** -Q 'select 1'",
     ("S3cr3t",)),
    ("ssh-keygen -t ed25519 -N S3cr3t -f /tmp/k", "ssh-keygen -t ed25519 -N *** -f /tmp/k",
     ("S3cr3t",)),
    ("snmpwalk -v2c -c S3cr3t 10.0.0.1", "snmpwalk -v2c -c *** 10.0.0.1", ("S3cr3t",)),
    ("curl -H 'Cookie: session=abc123' https://x", "curl -H 'Cookie: ***' https://x", ("abc123",)),
]

# Command lines that must come out unchanged: options that look alike but are not secrets.
UNCHANGED_CASES: list[str] = [
    "mysql -u root -p shop",  # -p alone: mysql prompts, 'shop' is the database
    "psql --no-password -h db app",
    "psql --password -h db app",  # --password as a switch, followed by an option
    "docker login --username bob --password-stdin registry.example.com",
    "docker run -d -p 8080:80 nginx:1.27",
    "ssh -p 2222 git@github.com",
    "git clone git@github.com:org/repo.git",
    "mkdir -p /var/lib/procstream",
    "python train.py --max-tokens 512 --tokenizer gpt2",
    "env PWD=/root OLDPWD=/ ls -la",
    "cat /etc/passwd /etc/shadow",
    "rsync -a --password-file=/etc/rsync.secret src/ dst::module",
    "/opt/google/chrome/chrome --password-store=basic --enable-features=X",
    "git commit --author='Ann <ann@example.com>' -m 'fix: token parsing'",
    "curl --anyauth -u bob https://x",  # no colon: curl asks for the password
    "aws s3 cp s3://bucket/key . --profile prod",
    "kubeadm token create --ttl 2h",
    "ssh -o PasswordAuthentication=no -o AuthorizedKeysFile=.ssh/authorized_keys host",
    "java -Dfile.encoding=UTF-8 -Dlog4j.configurationFile=/etc/log4j2.xml -jar app.jar",
    "openssl req -new -key server.key -passout env:KEY_PW -out server.csr",
    "ls --color=auto /tmp",
    "nginx: worker process",
    "/usr/lib/systemd/systemd --user",
    "gunicorn app:wsgi --bind 0.0.0.0:8000 --workers 4",
    "sleep 3600",
]


def split(cmd: str) -> tuple[str, ...]:
    return tuple(shlex.split(cmd))


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(("cmd", "expected", "secrets"), SECRET_CASES, ids=[c[0][:40] for c in SECRET_CASES])
def test_secret_command_lines(redactor: Redactor, cmd: str, expected: str, secrets: tuple[str, ...]) -> None:
    out = redactor.redact(split(cmd))
    assert out == split(expected)
    for secret in secrets:
        assert all(secret not in element for element in out), (secret, out)


@pytest.mark.parametrize("cmd", UNCHANGED_CASES)
def test_unchanged_command_lines(redactor: Redactor, cmd: str) -> None:
    argv = split(cmd)
    assert redactor.redact(argv) == argv


def test_the_table_is_large_enough() -> None:
    assert len(SECRET_CASES) + len(UNCHANGED_CASES) >= 25
    assert len(UNCHANGED_CASES) >= 10


@pytest.mark.parametrize("cmd", [c[0] for c in SECRET_CASES] + UNCHANGED_CASES)
def test_redaction_is_idempotent(redactor: Redactor, cmd: str) -> None:
    once = redactor.redact(split(cmd))
    assert redactor.redact(once) == once


def test_prefilter_never_changes_a_result() -> None:
    """The hint pre-filter only skips work: with it off, every result is the same."""
    fast, slow = Redactor(), Redactor()
    slow._use_hint = False
    cases = [split(c[0]) for c in SECRET_CASES] + [split(c) for c in UNCHANGED_CASES]
    # the same command lines with their tool names as basenames of a path, and upper-cased
    cases += [("/usr/bin/" + argv[0],) + argv[1:] for argv in cases]
    cases += [tuple(e.upper() for e in argv) for argv in cases]
    for argv in cases:
        assert fast.redact(argv) == slow.redact(argv), argv


def test_every_rule_is_behind_a_hint_stem() -> None:
    stems = tuple(s.lower() for s in _HINT_STEMS)
    for word in _WORDS:
        assert any(stem in word for stem in stems), word
    for name, tool in _TOOLS.items():
        # tools whose rules need 'login' or a sensitive key are covered by those stems
        if tool.after == ("login",) or tool.setting_after is not None:
            continue
        assert any(stem in name for stem in stems), name


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("--password", True), ("PGPASSWORD", True), ("MYSQL_PWD", True), ("--db-pass", True),
        ("AWS_SECRET_ACCESS_KEY", True), ("api_key", True), ("--apikey", True),
        ("-Djavax.net.ssl.trustStorePassword", True), ("--client-secret", True),
        ("SECRET_KEY_BASE", True), ("--auth", True), ("GITHUB_TOKEN", True), ("credentials", True),
        ("--private-key", True), ("x-auth-token", True), ("-storepass", True),
        ("--password-file", False), ("--token-ttl", False), ("--auth-type", False),
        ("--os-auth-url", False), ("--password-stdin", False), ("--api-key-id", False),
        ("--no-password", False), ("--ask-pass", False), ("--max-tokens", False),
        ("--tokenizer", False), ("--author", False), ("PWD", False), ("OLDPWD", False),
        ("--anyauth", False), ("--key", False), ("--bypass", False), ("PasswordAuthentication", False),
    ],
)
def test_is_sensitive_key(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def test_extra_pattern_replaces_whole_match() -> None:
    r = Redactor([r"sk-[A-Za-z0-9]{8,}"])
    assert r.redact(("client", "--model", "x", "sk-abcdefgh1234")) == ("client", "--model", "x", REDACTED)
    assert r.redact(("client", "key=sk-abcdefgh1234;x")) == ("client", f"key={REDACTED};x")


def test_extra_pattern_with_a_group_replaces_only_group_one() -> None:
    r = Redactor([r"--customer=(\d+)", r"dsn=\w+:(\w+)@"])
    assert r.redact(("app", "--customer=12345", "dsn=u:pw@h")) == (
        "app", f"--customer={REDACTED}", f"dsn=u:{REDACTED}@h",
    )


def test_extra_pattern_matching_empty_inserts_nothing() -> None:
    r = Redactor([r"x*", r"(y*)z"])
    assert r.redact(("abc", "z")) == ("abc", "z")


def test_extra_patterns_apply_before_default_rules() -> None:
    # the user's pattern sees the original text, the default rule still runs after it
    r = Redactor([r"internal-\w+"])
    assert r.redact(("app", "--host=internal-db7", "--password=pw")) == (
        "app", f"--host={REDACTED}", f"--password={REDACTED}",
    )


def test_bad_extra_pattern_names_the_regex() -> None:
    with pytest.raises(RedactPatternError) as info:
        Redactor(["ok", "(unclosed"])
    assert isinstance(info.value, ValueError)
    assert info.value.pattern == "(unclosed"
    assert "(unclosed" in str(info.value) and "--redact" in str(info.value)


def test_disabled_keeps_defaults_off_but_extra_patterns_on() -> None:
    r = Redactor([r"hunter\d"], enabled=False)
    assert not r.enabled
    assert r.redact(("app", "--password=S3cr3t", "hunter2")) == ("app", "--password=S3cr3t", REDACTED)


def test_drop_cmdline() -> None:
    r = Redactor(drop_cmdline=True)
    assert r.drop_cmdline
    assert r.redact(("app", "--password=x")) == ()


def test_empty_command_line() -> None:
    assert Redactor().redact(()) == ()


def test_instance_is_the_callable_events_expect(redactor: Redactor) -> None:
    # EventBuilder takes redact: Callable[[tuple[str, ...]], tuple[str, ...]]
    assert redactor(("mysql", "-pX")) == ("mysql", f"-p{REDACTED}")
    assert isinstance(redactor(("a", "b")), tuple)


def test_pathological_inputs_finish(redactor: Redactor) -> None:
    # deep nesting of quotes and a long element full of quotes and operators stay bounded
    nested = "--password=x"
    for i in range(12):
        q = "'" if i % 2 else '"'
        nested = f"sh -c {q}{nested}{q}"
    long = " ".join(['"a":"b",', "token=x;", "'q'", "&&"] * 2000)
    out = redactor.redact(("sh", "-c", nested, long, "\\", "'", '"', "\\'"))
    assert len(out) == 8
    assert "token=x" not in out[3]


# -- docs/redaction.md states the rules users read ------------------------------------------

DOC = (Path(__file__).resolve().parent.parent / "docs" / "redaction.md").read_text()


def doc_section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n#", start + len(title))
    return DOC[start:] if end < 0 else DOC[start:end]


def test_the_examples_in_the_docs_hold(redactor: Redactor) -> None:
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", doc_section("## Examples"), re.M)
    assert len(rows) >= 20
    for cmd, shown in rows:
        assert redactor.redact(split(cmd)) == split(shown), cmd


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("Secret words", _WORDS),
        ("Secret endings", frozenset(_GLUED)),
        ("Not endings", _GLUED_EXCEPTIONS),
        ("Key qualifiers", _KEY_QUALIFIERS),
        ("Switch verbs", _SWITCH_VERBS),
        ("Descriptors", _DESCRIPTORS),
        ("Wrappers", _WRAPPERS),
    ],
)
def test_the_docs_list_the_words_the_rules_use(label: str, words: frozenset[str]) -> None:
    name = r"\s+".join(label.split())  # the label may wrap
    m = re.search(rf"\*\*{name}:\*\*(.*?)(?:;|\.\s)", DOC, re.S)
    assert m is not None, label
    assert set(re.findall(r"`([^`]+)`", m.group(1))) == set(words)


def test_the_docs_list_every_tool() -> None:
    rows = [
        line for line in doc_section("### Tools").splitlines()
        if line.startswith("| ") and not line.startswith("| programs")
    ]
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row[2:].split(" | ")[0])}
    assert named == set(_TOOLS)
