"""The server's credentials and address checks, directly: which hosts count as loopback (anything else makes
``cad serve`` warn), the bearer comparison, and the token file (read strictly; written 0600 whatever the umask or
the mode of the file it replaces)."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest

from cadcore.cli import serve as serve_command
from cadcore.errors import CadError
from cadcore.server.security import is_loopback, read_token, token_matches, write_new_token


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("gpu-host.example", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_bearer_comparison():
    token = "s3cret-token-of-some-length"
    assert token_matches(f"Bearer {token}", token) and token_matches(f"bearer  {token} ", token)
    for header in (None, "", token, f"Basic {token}", f"Bearer {token[:-1]}", f"Bearer {token}x", "Bearer ",
                   f"Bearer {token.upper()}", "Bearer \u00e9\u00e9"):
        assert not token_matches(header, token), header


def test_token_file_written_0600_whatever_the_umask_and_read_back(tmp_path):
    path = tmp_path / "deep" / "server-token"
    path.parent.mkdir()
    path.write_text("old\n")
    path.chmod(0o666)
    previous = os.umask(0)
    try:
        token = write_new_token(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and read_token(path) == token and len(token) >= 40
    assert [p.name for p in path.parent.iterdir()] == ["server-token"]  # no temporary file left beside it


@pytest.mark.parametrize(("content", "problem"), [
    (None, "token file not found"), ("", "at least 16 characters"), ("short\n", "at least 16 characters"),
])
def test_bad_token_files_are_refused(tmp_path, content, problem):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CadError, match=problem):
        read_token(path)


def test_a_non_loopback_host_is_warned_about_before_serving(tmp_path, monkeypatch, capsys):
    """The warning is printed and then the server starts (here a stand-in: nothing listens during the test)."""
    served = []
    monkeypatch.setattr("cadcore.server.runner.serve", lambda app, options, version: served.append(options.host))
    (tmp_path / "token").write_text("a-token-long-enough-for-the-check\n")
    args = SimpleNamespace(host="0.0.0.0", port=0, token_file=str(tmp_path / "token"), max_sessions=1,
                           models_memory=1.0, session_ttl=60.0, max_upload_mb=1.0, job_timeout=1.0, ready_file=None,
                           device="cpu")
    assert serve_command.run(args) == 0 and served == ["0.0.0.0"]
    err = capsys.readouterr().err
    assert err.startswith("cad serve: warning: listening on 0.0.0.0, not loopback") and "TLS" in err
    args.host = "127.0.0.1"
    assert serve_command.run(args) == 0 and capsys.readouterr().err == ""
