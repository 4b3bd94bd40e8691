"""W&B mode resolution: never needs an account."""

from __future__ import annotations

import pytest

from src.tracking import resolve_wandb_mode, wandb_credentials_available


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for key in ["WANDB_API_KEY", "WANDB_MODE"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_offline_without_credentials(no_credentials):
    assert not wandb_credentials_available()
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("online") == "offline"


def test_online_with_key_or_netrc(no_credentials, monkeypatch):
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert resolve_wandb_mode(None) == "online"
    no_credentials.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"


def test_env_and_config_modes(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="online, offline or disabled"):
        resolve_wandb_mode("sometimes")
