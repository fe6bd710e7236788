"""Rewards never run code a spec string names by accident: ``classifier:`` builds registered
networks only, a user's module needs --allow-code and must hold an nn.Module subclass; whatever a
user's reward file does (exit, interrupt, constructor arguments, meta tensors) is one line, rc 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shortcut_diffusion import UsageError
from shortcut_diffusion.rewards import get_reward
from test_bad_input_cli import FAST, one_line_error

SRC = Path(__file__).resolve().parents[1] / "src"


def latent(reward: str, out: Path, *extra: str) -> list[str]:
    argv = list(FAST)
    argv[argv.index("--reward") + 1] = reward
    return ["latent", *argv, "--out", str(out), *extra]


@pytest.mark.parametrize("extra,message", [
    ((), "classifier:os:system would import the Python module 'os', which runs its code; pass --allow-code"),
    (("--allow-code",), "os:system is a builtin_function_or_method, not an nn.Module subclass"),
])
def test_a_classifier_spec_runs_no_shell_command(extra, message, tmp_path, capsys):
    marker = tmp_path / "created"
    err = one_line_error(latent(f"classifier:os:system,command=touch {marker},target=1", tmp_path / "run", *extra),
                         capsys)
    assert message in err
    assert not marker.exists()


USER_MODULE = textwrap.dedent("""
    from pathlib import Path
    import torch

    class Net(torch.nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(3 * 4 * 4, classes)

        def forward(self, x):
            return self.linear(x.flatten(1))

    def make_net(marker):
        Path(marker).touch()
        return Net()
""")


def test_a_classifier_from_the_users_module_needs_allow_code(tmp_path, monkeypatch, capsys):
    (tmp_path / "sdo_test_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sdo_test_nets", raising=False)
    with pytest.raises(UsageError, match="would import the Python module 'sdo_test_nets'"):
        get_reward("classifier:sdo_test_nets:Net,target=1,size=4")
    assert "sdo_test_nets" not in sys.modules  # refused before importing
    reward = get_reward("classifier:sdo_test_nets:Net,classes=5,target=1,size=4", allow_code=True)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(reward(x), torch.log_softmax(reward.model(reward.preprocess(x)), -1)[:, 1])
    marker = tmp_path / "called"
    with pytest.raises(UsageError, match="sdo_test_nets:make_net is a function, not an nn.Module subclass"):
        get_reward(f"classifier:sdo_test_nets:make_net,marker={marker},target=1", allow_code=True)
    assert not marker.exists()
    with pytest.raises(UsageError, match="could not build the classifier sdo_test_nets:Net: TypeError"):
        get_reward("classifier:sdo_test_nets:Net,depth=3,target=1", allow_code=True)
    # the command line passes --allow-code through
    assert main_rc(latent("classifier:sdo_test_nets:Net,target=1,size=4", tmp_path / "run", "--allow-code")) == 0


def main_rc(argv) -> int:
    from shortcut_diffusion.cli import main

    return main(argv)


@pytest.mark.parametrize("code,message", [
    ("raise SystemExit(0)", "could not import {path}: SystemExit: 0"),
    ("import sys\nsys.exit(0)", "could not import {path}: SystemExit: 0"),
    ("raise KeyboardInterrupt", "could not import {path}: KeyboardInterrupt"),
    ("def r(images, prompts=None):\n    raise SystemExit(0)", "reward {path}:r raised SystemExit: 0"),
    ("class r:\n    def __init__(self, scale, bias=0):\n        pass",
     "reward {path}:r is a class whose constructor needs arguments (scale)"),
    ("import torch\nclass r(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.w = torch.nn.Parameter(torch.ones(1, device='meta'))\n"
     "    def forward(self, images, prompts=None):\n        return images.mean((1, 2, 3)) * self.w",
     "reward r has parameters on the meta device"),
])
def test_user_code_that_exits_or_cannot_be_built_is_one_line(code, message, tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(code + "\n")
    err = one_line_error(latent(f"{path}:r", tmp_path / "run"), capsys)
    assert message.format(path=path) in err


@pytest.mark.parametrize("spec,message", [
    ("compressibility:quality=0", "quality must be 1..100, got 0"),
    ("compressibility:quality=high", "quality must be an integer 1..100, got 'high'"),
    ("ink=abc", "reward 'ink=abc': the weight 'abc' of ink is not a number"),
    ("ink=1,compressibility:quality=50=x", "the weight 'x' of compressibility:quality=50 is not a number"),
    ("inc=1", "unknown reward 'inc=1'"),
])
def test_reward_spec_messages_say_what_is_wrong(spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_reward(spec)


def test_an_unreachable_hub_is_one_line_without_retries(tmp_path):
    """No HF_HUB_OFFLINE, an empty cache, a hub that does not answer: one line within seconds."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(SRC),
               OMP_NUM_THREADS="1")
    script = textwrap.dedent("""
        import time
        import transformers  # imported before the clock: a busy machine's import time is not the point
        from shortcut_diffusion.rewards import get_reward
        from shortcut_diffusion.errors import UsageError
        start = time.perf_counter()
        try:
            get_reward("clip")
        except UsageError as error:
            print(f"{time.perf_counter() - start:.2f}")
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    seconds, message = result.stdout.splitlines()
    assert float(seconds) < 5, result.stderr
    assert "not in the local hub cache, and the hub is unreachable" in message
    assert "Retrying" not in result.stderr, result.stderr
