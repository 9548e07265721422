"""surgery: path-addressable model surgery and composition for PyTorch.

One path grammar (``"layer3"``, ``"features.6"``, ``"features[7:14]"``,
``"layer*.*.bn*"``) names the parts of any ``nn.Module``; every operation
(get, find, replace, delete, insert, cut, split, compose, replace_head,
adapt_input, freeze, layer groups, partial loading, verification) uses it.

Example:
    >>> import torchvision, surgery
    >>> m = torchvision.models.resnet18(weights=None)
    >>> surgery.find(m, "layer4.*.conv?")
    ['layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1', 'layer4.1.conv2']
"""

from ._errors import (
    ArgumentError,
    CheckpointError,
    LayerNotFoundError,
    LoadError,
    PathError,
    PathNotFoundError,
    PathSyntaxError,
    SaveError,
    ShapeMismatchError,
    SharedModuleWarning,
    StaleCacheError,
    SurgeryError,
    SurgeryWarning,
    TraceError,
    VerificationError,
)
from ._hints import Hint
from .checkpoint._load import LoadReport, load_partial
from .checkpoint._save import save_state_dict
from .edit._graph import delete, insert, replace
from .edit._heads import adapt_input, create_head, replace_head
from .paths._grammar import Path, parse_path
from .paths._resolve import find, get
from .trace._compose import compose, take
from .trace._cut import cut, split
from .trace._tree import ModelTree, TreeRow, tree
from .trace._verify import summary, verify
from .train._cache import FeatureCache, precompute
from .train._freeze import TrainableReport, TrainableRow, freeze, freeze_to, trainable, unfreeze
from .train._groups import layer_groups, param_groups

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "FeatureCache",
    "Hint",
    "LayerNotFoundError",
    "LoadError",
    "LoadReport",
    "ModelTree",
    "Path",
    "PathError",
    "PathNotFoundError",
    "PathSyntaxError",
    "SaveError",
    "ShapeMismatchError",
    "SharedModuleWarning",
    "StaleCacheError",
    "SurgeryError",
    "SurgeryWarning",
    "TraceError",
    "TrainableReport",
    "TrainableRow",
    "TreeRow",
    "VerificationError",
    "adapt_input",
    "compose",
    "create_head",
    "cut",
    "delete",
    "find",
    "freeze",
    "freeze_to",
    "get",
    "insert",
    "layer_groups",
    "load_partial",
    "param_groups",
    "parse_path",
    "precompute",
    "replace",
    "replace_head",
    "save_state_dict",
    "split",
    "summary",
    "take",
    "trainable",
    "tree",
    "unfreeze",
    "verify",
]
