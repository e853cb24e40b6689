"""Models: a spec (name + kwargs) -> nn.Module.

Your own model: register a factory with `@register("name")` (with what trainlab should pick
for it: its recipe, channels_last, CPU bf16), or name it by import path for training
(`--model mypkg.nets:make_net`, which gets the defaults). Loading a file resolves only
registered names; an import path stored in a file is imported only if the user allows that
module explicitly, so a file can never make trainlab import or call arbitrary code.

registry (names and their defaults) -> validators (the built-ins' kwarg checks) -> factory
(how any factory is called and sized) -> resolve (name -> factory, trust-checked) -> spec
(spec -> module); architectures/ holds the released models, one module each.
"""

from trainlab.models.architectures.cnn import cnn
from trainlab.models.architectures.cnn_fast import cnn_fast
from trainlab.models.architectures.mlp import mlp
from trainlab.models.architectures.mlp_reg import mlp_reg
from trainlab.models.architectures.resnet import resnet
from trainlab.models.factory import MAX_PARAMETERS, call_arguments, count_parameters
from trainlab.models.registry import NAME, ModelInfo, available, info, register
from trainlab.models.resolve import _import  # noqa: F401  (the CLI imports --allow-import's modules with it)
from trainlab.models.spec import build, build_from_spec, build_given, check_spec, given_model

__all__ = ["build", "build_from_spec", "build_given", "check_spec", "given_model", "call_arguments",
           "count_parameters", "register", "info", "available", "ModelInfo", "NAME", "MAX_PARAMETERS",
           "mlp", "mlp_reg", "cnn", "cnn_fast", "resnet"]
