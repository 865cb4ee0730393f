"""Output heads: every method of bigsoftmax behind one protocol (see :mod:`bigsoftmax.heads.base`)."""

from .base import Head, LinearEvalMixin
from .sampled import SampledSoftmax, SamplingHead

__all__ = ["Head", "LinearEvalMixin", "SampledSoftmax", "SamplingHead"]
# Each head module adds itself below with one import line and one __all__ extension.
from .nce import NCE, NegativeSampling, SampledLogistic  # noqa: E402

__all__ += ["NCE", "SampledLogistic", "NegativeSampling"]
from .tree import ClassBasedSoftmax, HierarchicalSoftmax, TreeSoftmax  # noqa: E402

__all__ += ["TreeSoftmax", "HierarchicalSoftmax", "ClassBasedSoftmax"]
from .margin import (  # noqa: E402
    AdditiveMarginSoftmax, AngularSoftmax, ArcFace, CosFace, L2ConstrainedSoftmax, LargeMarginSoftmax, SoftSoftmax,
    SphereFace, WeightedSoftmax,
)

__all__ += ["LargeMarginSoftmax", "AngularSoftmax", "SphereFace", "AdditiveMarginSoftmax", "CosFace", "ArcFace",
            "L2ConstrainedSoftmax", "WeightedSoftmax", "SoftSoftmax"]
from .full import FullSoftmax  # noqa: E402

__all__ += ["FullSoftmax"]
from .adaptive import AdaptiveSoftmax, choose_cutoffs  # noqa: E402
from .selfnorm import SelfNormalizedSoftmax  # noqa: E402

__all__ += ["AdaptiveSoftmax", "choose_cutoffs", "SelfNormalizedSoftmax"]
