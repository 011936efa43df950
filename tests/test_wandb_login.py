"""--report_to wandb online without a login fails before anything loads (wandb itself stopped
only once the Trainer started, after the model load, as an "internal error")."""

from __future__ import annotations

import pytest

from conftest import EXAMPLES

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


@pytest.fixture
def logged_out(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_online_without_a_key_fails_before_the_model_loads(tmp_path, airo_env, tiny_model_dir, logged_out,
                                                           monkeypatch):
    import transformers

    from airo.core.config import build_config
    from airo.core.errors import ConfigError
    from airo.core.training import run_training

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the wandb login was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    config = build_config(None, ["--model_name_or_path", tiny_model_dir, "--dataset", str(CONVERSATIONS),
                                 "--dataset_format", "airoboros_chat", "--output_dir", str(tmp_path / "out"),
                                 "--report_to", "wandb", "--max_steps", "1"])
    with pytest.raises(ConfigError) as raised:
        run_training(config)
    message = str(raised.value)
    assert message.startswith("--report_to: wandb reports online but is not logged in to api.wandb.ai")
    assert "wandb login" in message and "WANDB_MODE=offline" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env", [{"WANDB_MODE": "offline"}, {"WANDB_MODE": "disabled"}, {"WANDB_DISABLED": "true"},
                                 {"WANDB_API_KEY": "k" * 40}])
def test_offline_disabled_or_a_key_passes(env, logged_out, monkeypatch):
    from airo.core.wandb_login import check_wandb_login

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    check_wandb_login()


def test_a_netrc_entry_for_the_host_is_a_login(tmp_path, logged_out):
    from airo.core.errors import ConfigError
    from airo.core.wandb_login import check_wandb_login

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    check_wandb_login(env={"NETRC": str(netrc)})
    with pytest.raises(ConfigError, match="not logged in to wandb.example.org"):
        check_wandb_login(env={"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})
