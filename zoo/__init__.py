"""attnzoo: vision backbones built from one library of attention mixers.

``import attnzoo`` registers every family into timm (``timm.create_model('nat_tiny')``); no
existing timm name changes meaning. Subpackages: ``attnzoo.kernels`` (functional attention ops),
``attnzoo.layers`` (mixers and blocks). Family files: ``attnzoo.nat`` (NAT, DiNAT).
"""
__version__ = "0.1.0"

from ._registry import Published, get_entry, list_models
from . import nat  # noqa: E402,F401  (registers NAT / DiNAT)
from . import maxvit  # noqa: E402,F401  (registers MaxViT)
from . import davit  # noqa: E402,F401  (registers DaViT)
from . import halonet  # noqa: E402,F401  (registers HaloNet)
from . import shvit  # noqa: E402,F401  (registers SHViT)
from . import biformer  # noqa: E402,F401  (registers BiFormer)
from . import transnext  # noqa: E402,F401  (registers TransNeXt)

__all__ = ["__version__", "Published", "get_entry", "list_models"]
