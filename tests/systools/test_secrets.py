"""The security tool group on real files: hashes and digest checks inside the group's roots, and secret
scans that name the kind and place of each secret and never show the secret itself."""

from __future__ import annotations

import hashlib
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llmhost.errors import RefusedError, RequestError
from llmhost.systools.secrets import SecurityTools, find_secrets
from llmhost.systools.settings import SecurityToolSettings

# One of each kind, with the public part a preview may show. Built from pieces so that this file does
# not itself look like a leak to a scanner.
SECRETS: dict[str, tuple[str, str]] = {
    "aws_access_key_id": ("AKIA" + "Q3EXAMPLE7KEYZ2X", "AKIA"),
    "github_token": ("ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "ghp_"),
    "gitlab_token": ("glpat-" + "Xy9zAbC4dEf7GhI0jKl3", "glpat-"),
    "slack_token": ("xoxb-" + "1234567890-0987654321-AbCdEfGhIj", "xoxb-"),
    "anthropic_api_key": ("sk-ant-api03-" + "Zq8Wn3Kd9Lp2Mx7Rv4Ts1Yb6", "sk-ant-api03-"),
    "openai_api_key": ("sk-proj-" + "Hd73JskL29dkQpW0zXcV8bNm", "sk-proj-"),
    "llmhost_api_key": ("llmh_" + "Q2w3E4r5T6y7U8i9O0pAsDfGhJkL1z2X3c4V5b6N7m8", "llmh_"),
    "jwt": (
        "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJ",
    ),
}
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3n8Qk2\nZ9d8s7f6\n-----END RSA PRIVATE KEY-----"


def secret_body(secret: str, prefix: str) -> str:
    return secret[len(prefix) :]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "data.bin").write_bytes(b"\x00\x01payload" * 100)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "other.txt").write_text("outside")
    return root


def make_tools(root: Path, **overrides: Any) -> SecurityTools:
    return SecurityTools(SecurityToolSettings(enabled=True, roots=[root], **overrides))


@pytest.fixture
def sec(root: Path) -> SecurityTools:
    return make_tools(root)


def test_every_tool_describes_itself_and_each_parameter(sec: SecurityTools) -> None:
    assert [t.name for t in sec.tools()] == [
        "sec_hash_file",
        "sec_verify_file",
        "sec_scan_text",
        "sec_scan_file",
    ]
    for tool in sec.tools():
        assert tool.read_only and not tool.destructive and inspect.getdoc(tool.func)
        hints = typing.get_type_hints(tool.func, include_extras=True)
        assert issubclass(hints.pop("return"), BaseModel)
        for name, hint in hints.items():
            infos = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo)]
            assert infos and infos[0].description, f"{tool.name}.{name} has no description"


# ----- hashing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake2b"])
def test_hash_file_matches_hashlib(sec: SecurityTools, root: Path, algorithm: Any) -> None:
    data = (root / "data.bin").read_bytes()
    result = sec.sec_hash_file(path="data.bin", algorithm=algorithm)
    assert result.digest == hashlib.new(algorithm, data).hexdigest()
    assert (result.size, result.algorithm, result.path) == (
        len(data),
        algorithm,
        str((root / "data.bin").resolve()),
    )


def test_verify_file_accepts_the_right_digest_in_every_spelling(sec: SecurityTools, root: Path) -> None:
    data = (root / "data.bin").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    assert sec.sec_verify_file(path="data.bin", expected=sha256).match
    assert sec.sec_verify_file(path="data.bin", expected=sha256.upper()).match
    assert sec.sec_verify_file(path="data.bin", expected=f"sha256:{sha256}").match
    blake = hashlib.blake2b(data).hexdigest()
    assert sec.sec_verify_file(path="data.bin", expected=f"blake2b:{blake}").algorithm == "blake2b"
    assert sec.sec_verify_file(
        path="data.bin", expected=hashlib.sha512(data).hexdigest(), algorithm="sha512"
    ).match
    wrong = sec.sec_verify_file(path="data.bin", expected="0" * 64)
    assert not wrong.match and set(wrong.model_dump()) == {"path", "algorithm", "match", "size"}


def test_verify_file_refuses_malformed_digests(sec: SecurityTools) -> None:
    with pytest.raises(RequestError, match="64 hex characters"):
        sec.sec_verify_file(path="data.bin", expected="abc")
    with pytest.raises(RequestError, match="128 hex characters"):
        sec.sec_verify_file(path="data.bin", expected="z" * 128, algorithm="sha512")
    with pytest.raises(RequestError, match="disagree"):
        sec.sec_verify_file(path="data.bin", expected="sha512:" + "0" * 128, algorithm="sha256")
    with pytest.raises(RequestError, match="unknown digest prefix"):
        sec.sec_verify_file(path="data.bin", expected="md5:" + "0" * 32)


def test_files_over_max_file_bytes_are_refused(root: Path) -> None:
    tools = make_tools(root, max_file_bytes=100)
    for call in (
        lambda: tools.sec_hash_file(path="data.bin"),
        lambda: tools.sec_verify_file(path="data.bin", expected="0" * 64),
        lambda: tools.sec_scan_file(path="data.bin"),
    ):
        with pytest.raises(RequestError, match="max_file_bytes"):
            call()
    with pytest.raises(RequestError, match="max_file_bytes"):
        tools.sec_scan_text(text="x" * 101)


@pytest.mark.parametrize(
    "path", ["../outside/other.txt", "{outside}/other.txt", "link/other.txt", "file_link"]
)
def test_paths_outside_the_roots_are_refused(sec: SecurityTools, root: Path, path: str) -> None:
    outside = root.parent / "outside"
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file_link").symlink_to(outside / "other.txt")
    for call in (sec.sec_hash_file, sec.sec_scan_file):
        with pytest.raises(RefusedError, match="outside the allowed roots"):
            call(path=path.format(outside=outside))


def test_no_roots_refuses_every_file(tmp_path: Path) -> None:
    with pytest.raises(RefusedError, match="no roots"):
        SecurityTools(SecurityToolSettings(enabled=True)).sec_hash_file(path=str(tmp_path / "x"))


# ----- secret scans -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_scan_finds_each_kind_with_its_place_and_a_preview_without_it(sec: SecurityTools, kind: str) -> None:
    secret, prefix = SECRETS[kind]
    text = f"first line\n  value = {secret} # trailing\n"
    result = sec.sec_scan_text(text=text)
    assert [(f.kind, f.line, f.column, f.length) for f in result.findings] == [(kind, 2, 11, len(secret))]
    preview = result.findings[0].preview
    assert preview == f"{prefix}…({len(secret)} chars)"
    assert secret_body(secret, prefix) not in result.model_dump_json()


def test_scan_finds_keys_in_json_text_after_an_escape(sec: SecurityTools) -> None:
    secret, _ = SECRETS["github_token"]
    found = sec.sec_scan_text(text='{"log": "token:\\n' + secret + '"}').findings
    assert [f.kind for f in found] == ["github_token"]


def test_scan_finds_private_key_blocks_aws_secrets_urls_and_webhooks(sec: SecurityTools) -> None:
    aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Xr3TnLp"
    text = "\n".join(
        [
            "config:",
            PEM,
            f'aws_secret_access_key = "{aws_secret}"',
            "DATABASE_URL=postgresql://app:S3cr3tPassw0rd@db:5432/app",
            "hook: https://hooks.slack.com/services/T0ABCDEF1/B0GHIJKL2/q1w2e3r4t5y6u7i8o9p0asdf",
            "Authorization: Bearer 9fH2kL7pQ4xZ8mN3vB6c",
        ]
    )
    result = sec.sec_scan_text(text=text)
    assert [(f.kind, f.line) for f in result.findings] == [
        ("private_key", 2),
        ("aws_secret_access_key", 6),
        ("url_password", 7),
        ("slack_webhook", 8),
        ("bearer_token", 9),
    ]
    previews = [f.preview for f in result.findings]
    assert previews[0] == f"-----BEGIN RSA PRIVATE KEY-----…({len(PEM)} chars)"
    assert previews[1] == "aws_secret_access_key=…(40 chars)" and previews[2] == "postgresql://…(14 chars)"
    dumped = result.model_dump_json()
    for hidden in (
        "MIIEowIBAAKCAQEAx3n8Qk2",
        aws_secret,
        "S3cr3tPassw0rd",
        "q1w2e3r4t5y6",
        "9fH2kL7pQ4xZ8mN3vB6c",
    ):
        assert hidden not in dumped


def test_scan_reports_high_entropy_assignments_and_ignores_code_and_placeholders(sec: SecurityTools) -> None:
    text = "\n".join(
        [
            'db_password = "Tr0ub4dor&3xQz!"',  # reported
            '{"api_key": "Zx9Qw8Er7Ty6Ui5Op4"}',  # reported (JSON)
            "CLIENT_SECRET=k2J9dL0qP7wX4zR1",  # reported (env file)
            "password = self.password",
            "password = get_password()",
            "token = os.environ['TOKEN']",
            "secret: ${SECRET_VALUE}",
            "PASSWORD=changeme",
            'password = "aaaaaaaaaaaa"',
            "author: Jane Doe",
            'model = "sk-learn-estimator-pipeline"',
        ]
    )
    result = sec.sec_scan_text(text=text)
    assert [(f.kind, f.line, f.column) for f in result.findings] == [
        ("generic_secret", 1, 16),
        ("generic_secret", 2, 14),
        ("generic_secret", 3, 15),
    ]
    assert [f.preview for f in result.findings] == [
        "db_password=…(15 chars)",
        "api_key=…(18 chars)",
        "CLIENT_SECRET=…(16 chars)",
    ]


def test_a_specific_key_wins_over_the_generic_assignment_holding_it(sec: SecurityTools) -> None:
    secret, _ = SECRETS["openai_api_key"]
    found = sec.sec_scan_text(text=f'OPENAI_API_KEY = "{secret}"').findings
    assert [f.kind for f in found] == ["openai_api_key"]


def test_scan_lists_at_most_max_findings_and_counts_the_rest(root: Path) -> None:
    secret, _ = SECRETS["github_token"]
    result = make_tools(root, max_findings=3).sec_scan_text(text=f"{secret}\n" * 10)
    assert len(result.findings) == 3 and result.count == 10 and result.truncated
    assert [f.line for f in result.findings] == [1, 2, 3]


def test_scan_of_clean_text_finds_nothing() -> None:
    result = find_secrets("Hello, world. The bearer of this letter is welcome.\nx = 1\n", 10)
    assert result.findings == [] and result.count == 0 and not result.truncated


def test_scan_file_reports_the_file_and_its_secrets(sec: SecurityTools, root: Path) -> None:
    secret, _ = SECRETS["aws_access_key_id"]
    (root / "deploy.env").write_text(f"REGION=eu-west-1\nAWS_ACCESS_KEY_ID={secret}\n")
    result = sec.sec_scan_file(path="deploy.env")
    assert (
        result.path == str((root / "deploy.env").resolve())
        and result.size == (root / "deploy.env").stat().st_size
    )
    assert [(f.kind, f.line, f.column) for f in result.findings] == [("aws_access_key_id", 2, 19)]
    assert secret[4:] not in result.model_dump_json()
