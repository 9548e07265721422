"""Checkpoints: sources by format, key filters and renames, the load plan and commit, saves.

Private: the public names are re-exported by :mod:`surgery`. Other domains of the
package (the CLI) use the names below rather than the modules' private ones::

    _source        TensorInfo, TensorSource, MappingSource (the source contract)
    _torchfile     torch zip / legacy files          _safetensors   .safetensors files
    _sharded       *.index.json shards               _dcp           torch.distributed.checkpoint
    _unwrap        {"model": sd, ...} wrappers       _open          open_source (the dispatch)
    _rename        include/exclude, rename rules     _casting       casting rules
    _plan          select, match, check              _commit        the only writes
    _report        LoadReport, StateDictView         _materialize   meta targets, DTensors
    _load          load_partial, open_checkpoint     _save          save_state_dict
"""

from ._casting import CASTING
from ._open import open_source
from ._source import TensorInfo, TensorSource

__all__ = ["CASTING", "TensorInfo", "TensorSource", "open_source"]
