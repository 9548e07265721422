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

from . import layers as layers  # swap factories: surgery.layers.group_norm(32), ...
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
from ._version import __version__ as __version__
from .checkpoint._load import load_partial, open_checkpoint
from .checkpoint._match import KeyMatch, match_keys
from .checkpoint._report import LoadReport, StateDictView
from .checkpoint._save import save_state_dict
from .edit._graph import delete, insert, replace
from .edit._head_layers import AdaptiveConcatPool2d, create_head
from .edit._heads import replace_head
from .edit._plan import Edit, EditPlan, Setting
from .edit._stem import adapt_input
from .edit._swap import SwapReport, swap
from .paths._grammar import Path, parse_path
from .paths._resolve import find, get
from .trace._compose import compose, take
from .trace._cut import cut, split
from .trace._points import cut_points
from .trace._summary import summary
from .trace._transfer import TransferReport, check_transfer
from .trace._tree import ModelTree, TreeRow, tree
from .trace._verify import verify
from .train._batchnorm import FrozenBatchNormNd
from .train._cache import FeatureCache
from .train._freeze import freeze, freeze_to, unfreeze
from .train._groups import layer_groups, param_groups
from .train._precompute import precompute
from .train._trainable import TrainableReport, TrainableRow, trainable

__all__ = [
    "AdaptiveConcatPool2d",
    "ArgumentError",
    "CheckpointError",
    "Edit",
    "EditPlan",
    "FeatureCache",
    "FrozenBatchNormNd",
    "Hint",
    "KeyMatch",
    "LayerNotFoundError",
    "LoadError",
    "LoadReport",
    "ModelTree",
    "Path",
    "PathError",
    "PathNotFoundError",
    "PathSyntaxError",
    "SaveError",
    "Setting",
    "ShapeMismatchError",
    "SharedModuleWarning",
    "StaleCacheError",
    "StateDictView",
    "SurgeryError",
    "SurgeryWarning",
    "SwapReport",
    "TraceError",
    "TrainableReport",
    "TrainableRow",
    "TransferReport",
    "TreeRow",
    "VerificationError",
    "adapt_input",
    "check_transfer",
    "compose",
    "create_head",
    "cut",
    "cut_points",
    "delete",
    "find",
    "freeze",
    "freeze_to",
    "get",
    "insert",
    "layer_groups",
    "load_partial",
    "match_keys",
    "open_checkpoint",
    "param_groups",
    "parse_path",
    "precompute",
    "replace",
    "replace_head",
    "save_state_dict",
    "split",
    "summary",
    "swap",
    "take",
    "trainable",
    "tree",
    "unfreeze",
    "verify",
]
