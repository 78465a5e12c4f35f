"""The ``security`` group (scope ``tools:security``): hash and verify files under the group's roots, and
scan text or files for secrets, reporting where each one is and what kind it is, never the secret.

    kind                   what it finds
    private_key            -----BEGIN ... PRIVATE KEY----- blocks (RSA, EC, OPENSSH, PGP, ...)
    aws_access_key_id      AKIA/ASIA/ABIA/ACCA + 16
    aws_secret_access_key  40 base64 characters assigned to a name with "aws" and "secret" in it
    github_token           ghp_/gho_/ghu_/ghs_/ghr_ + 36 or more, github_pat_...
    gitlab_token           glpat-, gldt-, glrt-, glptt-, glsoat-, ... + 20 or more
    slack_token            xoxa-/xoxb-/xoxp-/xoxo-/xoxs-/xoxr-/xoxe-..., Slack webhook URLs (slack_webhook)
    anthropic_api_key      sk-ant-...
    openai_api_key         sk-..., sk-proj-..., sk-svcacct-... (with a digit: not `sk-learn-...`)
    llmhost_api_key        llmh_...
    jwt                    eyJ....eyJ....signature
    bearer_token           the token after "Bearer " (20 or more characters, with a digit)
    url_password           the password in scheme://user:password@host
    generic_secret         password= / secret: / token => / api_key = ... with a high-entropy value

A preview shows only what is public about a finding: the token's fixed prefix (``ghp_``), or the name
it was assigned to (``db_password=``), and its length. The detectors are this module's own: the ones in
``llmhost.security.policy_patterns`` cannot be imported from here without an import circle between the
packages (``security`` -> ``config`` -> ``systools``), and they do not tell the kinds apart.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from llmhost.errors import RequestError
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.paths import Sandbox
from llmhost.systools.settings import SecurityToolSettings

__all__ = ["SecurityTools", "find_secrets"]

Algorithm = Literal["sha256", "sha512", "blake2b"]
_CHUNK = 1024 * 1024

PathArg = Annotated[
    str, Field(description="A file inside the group's roots: absolute, or relative to the first root.")
]
AlgorithmArg = Annotated[Algorithm, Field(description="Hash function: sha256, sha512 or blake2b (512 bits).")]


def _secret(m: re.Match[str]) -> str:
    """The secret a rule's match holds: its ``secret`` group, else the whole match."""
    return m["secret"] if "secret" in m.re.groupindex else m[0]


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _random_looking(m: re.Match[str]) -> bool:
    """Letters and digits mixed, and at least 3 bits of entropy per character (not a word or name)."""
    value = _secret(m)
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and _entropy(value) >= 3.0


_DUMMY_VALUES = re.compile(
    r"(?i)^(?:x+|\*+|\.+|<.*>|\{.*\}|\$.*|%.*%|changeme|password|secret|example.*|none|null)$"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _generic_value(m: re.Match[str]) -> bool:
    """A value worth reporting: 8+ characters with at least 3 bits of entropy each, not a dummy value
    (``${X}``, ``changeme``) and, unquoted, not what reads as code (``self.password``, ``db_pass``: a
    name without digits or a dotted attribute)."""
    value = m["secret"]
    if len(value) < 8 or _DUMMY_VALUES.match(value) or _entropy(value) < 3.0:
        return False
    code_like = "." in value or not any(c.isdigit() for c in value)
    return bool(m["q"]) or not (_IDENTIFIER.match(value) and code_like)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A detector: the match's ``secret`` group (else the whole match) is the secret; ``prefix`` and
    ``name`` groups are public and shown in the preview; ``check`` must pass on the match."""

    kind: str
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], bool] | None = None
    generic: bool = False  # loses to any specific rule it overlaps


# Not inside a longer token, but allowed right after a JSON/C escape ("\nghp_..." in JSON text).
_B = r"(?:(?<![A-Za-z0-9_\-])|(?<=\\[nrtbf]))"
_E = r"(?![A-Za-z0-9_\-])"
_NAME_CHARS = r"[A-Za-z0-9_.\-]"
_ASSIGN = r"""["']?\s*(?:=|:=|:|=>)\s*(?P<q>["']?)"""

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "private_key",
        re.compile(
            r"(?P<prefix>-----BEGIN (?P<t>(?:[A-Z0-9]+ )*)PRIVATE KEY(?P<b>(?: BLOCK)?)-----)"
            r"(?:[\s\S]*?-----END (?P=t)PRIVATE KEY(?P=b)-----)?"
        ),
    ),
    _Rule(
        "aws_access_key_id", re.compile(_B + r"(?P<prefix>A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}" + _E)
    ),
    _Rule(
        "aws_secret_access_key",
        re.compile(
            r"(?<![A-Za-z0-9_.\-])(?P<name>(?i:" + _NAME_CHARS + r"{0,20}aws" + _NAME_CHARS + r"{0,20}secret"
            rf"{_NAME_CHARS}{{0,20}})){_ASSIGN}(?P<secret>[A-Za-z0-9/+]{{40}})(?![A-Za-z0-9/+=])"
        ),
    ),
    _Rule("github_token", re.compile(_B + r"(?P<prefix>gh[pousr]_)[A-Za-z0-9]{36,}" + _E)),
    _Rule("github_token", re.compile(_B + r"(?P<prefix>github_pat_)[A-Za-z0-9_]{22,}" + _E)),
    _Rule(
        "gitlab_token",
        re.compile(
            _B + r"(?P<prefix>gl(?:pat|dt|rt|ptt|soat|ft|imt|cbt|oas|agent)-)[A-Za-z0-9_\-]{20,}" + _E
        ),
    ),
    _Rule("slack_token", re.compile(_B + r"(?P<prefix>xox[abposre]-)[A-Za-z0-9\-]{10,}" + _E)),
    _Rule(
        "slack_webhook",
        re.compile(
            r"(?P<prefix>https://hooks\.slack\.com/services/)T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"
        ),
    ),
    _Rule(
        "anthropic_api_key", re.compile(_B + r"(?P<prefix>sk-ant-(?:[a-z]+[0-9]*-)?)[A-Za-z0-9_\-]{20,}" + _E)
    ),
    _Rule(
        "openai_api_key",
        re.compile(_B + r"(?P<prefix>sk-(?:proj-|svcacct-|admin-)?)(?!ant-)[A-Za-z0-9_\-]{20,}" + _E),
        _random_looking,
    ),
    _Rule("llmhost_api_key", re.compile(_B + r"(?P<prefix>llmh_)[A-Za-z0-9_\-]{20,}" + _E)),
    _Rule(
        "jwt",
        re.compile(_B + r"(?P<prefix>eyJ)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*" + _E),
    ),
    _Rule(
        "bearer_token",
        re.compile(r"(?P<prefix>\b[Bb]earer\s+)(?P<secret>[A-Za-z0-9._~+/\-]{20,}=*)(?![A-Za-z0-9._~+/=\-])"),
        _random_looking,
    ),
    _Rule(
        "url_password",
        re.compile(
            r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://)[^\s:/@]{1,128}:(?P<secret>[^\s:/@]{1,256})@"
        ),
        lambda m: not _DUMMY_VALUES.match(m["secret"]),
    ),
    _Rule(
        "generic_secret",
        re.compile(
            r"(?<![A-Za-z0-9_.\-])(?P<name>(?i:" + _NAME_CHARS + r"{0,30}"
            r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key"
            r"|credentials?|auth)"
            + _NAME_CHARS
            + r"{0,30}))"
            + _ASSIGN
            + r"(?P<secret>[^\s\"'`,;()\[\]{}<>]{1,256})"
            r"(?:(?P=q)(?<=[\"'])|(?<![\"'])(?=[\s,;]|$))"
        ),
        _generic_value,
        generic=True,
    ),
)


class Finding(BaseModel):
    kind: str = Field(description="What was found: private_key, aws_access_key_id, github_token, ...")
    line: int = Field(description="1-based line where the secret starts.")
    column: int = Field(description="1-based character column where the secret starts.")
    length: int = Field(description="Length of the secret in characters.")
    preview: str = Field(description="Only its public part (`ghp_`, `db_password=`) and length.")


class ScanResult(BaseModel):
    findings: list[Finding] = Field(description="Secrets found, in text order (at most max_findings).")
    count: int = Field(description="All secrets found, also those not listed.")
    truncated: bool = Field(description="True when more were found than listed.")
    path: str | None = Field(None, description="The file scanned (resolved), for sec_scan_file.")
    size: int | None = Field(None, description="Its size in bytes, for sec_scan_file.")


class HashResult(BaseModel):
    path: str = Field(description="The file hashed (resolved).")
    algorithm: Algorithm = Field(description="The hash function.")
    digest: str = Field(description="The digest in lowercase hex.")
    size: int = Field(description="Bytes hashed (the file's size).")


class VerifyResult(BaseModel):
    path: str = Field(description="The file checked (resolved).")
    algorithm: Algorithm = Field(description="The hash function used.")
    match: bool = Field(description="Whether the file's digest equals the expected one.")
    size: int = Field(description="Bytes hashed.")


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int
    end: int
    rank: int
    kind: str
    preview: str


def _hits(text: str) -> list[_Hit]:
    """Every rule's checked matches, overlaps resolved: leftmost wins, then the earlier rule; a generic
    assignment loses to any specific secret it overlaps (``api_key = "sk-..."`` is an openai_api_key)."""
    specific: list[_Hit] = []
    generic: list[_Hit] = []
    for rank, rule in enumerate(_RULES):
        for m in rule.pattern.finditer(text):
            group = "secret" if "secret" in rule.pattern.groupindex else 0
            start, end = m.span(group)
            if end == start or (rule.check is not None and not rule.check(m)):
                continue
            named = m.groupdict()
            shown = f"{named['name']}=" if named.get("name") else named.get("prefix") or ""
            preview = f"{shown.strip()}…({end - start} chars)"
            (generic if rule.generic else specific).append(_Hit(start, end, rank, rule.kind, preview))
    specific.sort(key=lambda h: (h.start, h.rank))
    chosen: list[_Hit] = []
    for hit in specific:
        if not chosen or hit.start >= chosen[-1].end:
            chosen.append(hit)
    starts = [h.start for h in chosen]
    for hit in generic:
        i = bisect.bisect_left(starts, hit.end)  # chosen hits starting before this one ends
        if i == 0 or chosen[i - 1].end <= hit.start:
            chosen.insert(i, hit)
            starts.insert(i, hit.start)
    return chosen


def find_secrets(text: str, limit: int) -> ScanResult:
    """The secrets in ``text`` (at most ``limit`` listed), each with its kind, 1-based line and column,
    length and a preview that never contains the secret."""
    hits = _hits(text)
    line_starts = [0, *(m.end() for m in re.finditer("\n", text))]
    findings = []
    for hit in hits[:limit]:
        index = bisect.bisect_right(line_starts, hit.start) - 1
        column = hit.start - line_starts[index] + 1
        findings.append(
            Finding(
                kind=hit.kind, line=index + 1, column=column, length=hit.end - hit.start, preview=hit.preview
            )
        )
    return ScanResult(findings=findings, count=len(hits), truncated=len(hits) > limit)


_HEX = re.compile(r"[0-9a-fA-F]+")
_ALGORITHMS: dict[str, Algorithm] = {"sha256": "sha256", "sha512": "sha512", "blake2b": "blake2b"}


class SecurityTools(ToolGroup):
    """Hashes and secret scans; files only under the group's own roots."""

    name: ClassVar[str] = "security"
    scope: ClassVar[str] = "tools:security"

    def __init__(self, settings: SecurityToolSettings) -> None:
        self.settings = settings
        self.sandbox = Sandbox(settings.roots)

    def tools(self) -> list[SystemTool]:
        return [
            SystemTool("sec_hash_file", self.sec_hash_file, "Hash a file"),
            SystemTool("sec_verify_file", self.sec_verify_file, "Verify a file's digest"),
            SystemTool("sec_scan_text", self.sec_scan_text, "Scan text for secrets"),
            SystemTool("sec_scan_file", self.sec_scan_file, "Scan a file for secrets"),
        ]

    def _read(self, path: str, sink: Callable[[bytes], None]) -> tuple[Path, int]:
        """Feed the file's bytes to ``sink``; refuses a file over max_file_bytes (also one that grows
        past it while being read). Returns the resolved path and the bytes read."""
        real = self.sandbox.resolve(path)
        cap = self.settings.max_file_bytes
        too_big = RequestError(f"file is larger than max_file_bytes ({cap}): {path}", param="path")
        with os.fdopen(self.sandbox.open_file(real, shown=path), "rb") as handle:
            if os.fstat(handle.fileno()).st_size > cap:
                raise too_big
            total = 0
            while chunk := handle.read(min(_CHUNK, cap - total + 1)):
                total += len(chunk)
                if total > cap:
                    raise too_big
                sink(chunk)
        return real, total

    def _digest(self, path: str, algorithm: Algorithm) -> tuple[Path, str, int]:
        hasher = hashlib.new(algorithm)
        real, size = self._read(path, hasher.update)
        return real, hasher.hexdigest(), size

    def sec_hash_file(self, path: PathArg, algorithm: AlgorithmArg = "sha256") -> HashResult:
        """Hash a file inside the security group's roots (sha256, sha512 or blake2b) and return the hex
        digest and the size. Files over max_file_bytes are refused."""
        real, digest, size = self._digest(path, algorithm)
        return HashResult(path=str(real), algorithm=algorithm, digest=digest, size=size)

    def sec_verify_file(
        self,
        path: PathArg,
        expected: Annotated[
            str,
            Field(
                description="Expected digest in hex; may be written `sha256:<hex>` (then algorithm follows)."
            ),
        ],
        algorithm: Annotated[
            Algorithm | None, Field(description="Hash function (default: the `algo:` prefix, else sha256).")
        ] = None,
    ) -> VerifyResult:
        """Check that a file inside the security group's roots has the expected digest (compared in
        constant time). Says only whether it matches; sec_hash_file gives the actual digest."""
        algo, _, hexdigest = expected.strip().rpartition(":")
        if algo and algo.lower() not in _ALGORITHMS:
            raise RequestError(
                f"unknown digest prefix {algo!r} (use sha256, sha512 or blake2b)", param="expected"
            )
        if algo and algorithm is not None and algo.lower() != algorithm:
            raise RequestError("the expected digest's prefix and algorithm disagree", param="algorithm")
        chosen = algorithm or _ALGORITHMS.get(algo.lower(), "sha256")
        want = hashlib.new(chosen).digest_size * 2
        if len(hexdigest) != want or not _HEX.fullmatch(hexdigest):
            raise RequestError(f"expected must be {want} hex characters for {chosen}", param="expected")
        real, digest, size = self._digest(path, chosen)
        match = hmac.compare_digest(digest.encode(), hexdigest.lower().encode())
        return VerifyResult(path=str(real), algorithm=chosen, match=match, size=size)

    def sec_scan_text(
        self, text: Annotated[str, Field(description="The text to scan (code, config, logs, a diff).")]
    ) -> ScanResult:
        """Find secrets in a text: cloud and API keys (AWS, GitHub, GitLab, Slack, OpenAI, Anthropic,
        llmhost), private key blocks, JWTs, bearer tokens and high-entropy password/secret/token
        assignments. Each finding has its kind, line, column and a preview without the secret."""
        if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_file_bytes:
            raise RequestError(
                f"text is larger than max_file_bytes ({self.settings.max_file_bytes})", param="text"
            )
        return find_secrets(text, self.settings.max_findings)

    def sec_scan_file(self, path: PathArg) -> ScanResult:
        """Find secrets in a file inside the security group's roots (as sec_scan_text does; the file is
        read as UTF-8, undecodable bytes skipped). Files over max_file_bytes are refused."""
        chunks: list[bytes] = []
        real, size = self._read(path, chunks.append)
        result = find_secrets(b"".join(chunks).decode("utf-8", "replace"), self.settings.max_findings)
        return result.model_copy(update={"path": str(real), "size": size})
