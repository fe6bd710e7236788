"""The names some options accept, kept free of torch and diffusers so that the command line
(``sdo --help``, every option group) builds without importing them. The modules that map these
names to objects (:mod:`.precision`, :mod:`.schedulers`, :mod:`.finetune.targets`) import them
from here."""

DTYPES = ("fp32", "bf16", "fp16")
SCHEDULERS = ("ddim", "ddpm", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "flow-euler")
FINETUNE_TARGETS = ("lora", "full", "embedding")
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "mlflow")
"""``--report-to``: the experiment trackers (:mod:`.tracking`)."""
