"""SCANN: grow-and-prune synthesis of compact feed-forward networks (schemes A/B/C, Algorithm 2).

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (Hassantabar, Wang, Jha;
``../shared/seeds/002_d08e71b4be716ba4.txt``).  The space is
:class:`search_spaces.feedforward.FeedForwardNet`; image mode's LeNet-5 is :mod:`search_spaces.lenet`.

* :mod:`.config` -- :class:`ScannConfig`, the schemes' presets (Sec. 4.1) and training defaults;
* :mod:`.operations` -- connection and neuron growth, pruning, the masks and the optimizer state;
* :mod:`.synthesis` -- Algorithm 2 (:class:`ScannSynthesis`);
* :mod:`.networks` -- the data, the MLP baseline, the seed network, costs and export;
* :mod:`.selection` -- which checkpoint is the output (H.A., M.C., a size budget, cross-validation).
"""
from .config import IMAGE_TRAINING, SCHEME_PRESETS, TABULAR_TRAINING, ScannConfig
from .networks import TensorData, export_network, extract_features, network_cost, seed_network, train_mlp
from .selection import Select, at_min_ratio, compression_ratio, cv_choice, pooled_se, within_tolerance
from .synthesis import Checkpoint, ScannSynthesis, synthesize

__all__ = ["IMAGE_TRAINING", "SCHEME_PRESETS", "TABULAR_TRAINING", "Checkpoint", "ScannConfig", "ScannSynthesis",
           "Select", "TensorData", "at_min_ratio", "compression_ratio", "cv_choice", "export_network",
           "extract_features", "network_cost", "pooled_se", "seed_network", "synthesize", "train_mlp",
           "within_tolerance"]
