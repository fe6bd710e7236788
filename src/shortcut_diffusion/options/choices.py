"""The names some options accept, kept free of torch and diffusers so that the command line
(``sdo --help``, every option group) builds without importing them. The modules that map these
names to objects (:mod:`.precision`, :mod:`.schedulers`, :mod:`.finetune.targets`) import them
from here."""

DTYPES = ("fp32", "bf16", "fp16")
SCHEDULERS = ("ddim", "ddpm", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "flow-euler")
FINETUNE_TARGETS = ("lora", "full", "embedding")
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "mlflow")
"""``--report-to``: the experiment trackers (:mod:`.tracking`)."""
REWARD_FRAMES = ("all", "first", "middle", "last", "random:K", "stride:S")
"""``--reward-frames``: the frames of a video an image reward scores (:mod:`.rewards.video`)."""


def check_frames(spec: str) -> None:
    """Refuse a ``--reward-frames`` value that is none of :data:`REWARD_FRAMES`."""
    from shortcut_diffusion.errors import UsageError

    name, _, arg = spec.partition(":")
    if name in ("all", "first", "middle", "last") and not arg:
        return
    if name in ("random", "stride"):
        if arg.isdigit() and int(arg) >= 1:
            return
        raise UsageError(f"--reward-frames {spec}: {name}:N needs a whole number N >= 1")
    raise UsageError(f"--reward-frames {spec!r}: choose one of {', '.join(REWARD_FRAMES)}")
