"""The paper's reported numbers (Fang, Li, Li; Table 1), quoted next to ours wherever we report."""

TITLE = 'Salient Positions based Attention Network for Image Classification'
AUTHORS = 'Sheng Fang, Kaiyu Li, Zhe Li'
CODE_URL = 'https://github.com/likyoo/SPANet'
ARXIV = '2106.04996'  # as the authors' repository gives it
BIBTEX = """@misc{fang2021spanet,
  title         = {Salient Positions based Attention Network for Image Classification},
  author        = {Fang, Sheng and Li, Kaiyu and Li, Zhe},
  year          = {2021},
  eprint        = {2106.04996},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2106.04996},
  note          = {Code: https://github.com/likyoo/SPANet}
}"""

# Table 1 "# of Params" (10-class head), in millions
PARAMS_M = {
    'resnet18_cifar': 11.174, 'resnet50_cifar': 23.521, 'resnet18_se': 11.268, 'resnet50_se': 26.078,
    'resnet18_gc': 11.191, 'resnet50_gc': 23.785, 'resnet18_nl': 11.306, 'resnet50_nl': 25.622,
    'resnet18_spa': 11.371, 'resnet50_spa': 26.671,
}

# Table 1 top-1 (%), single runs; absent: not measured in the paper
TOP1 = {
    'resnet18_cifar': {'cifar10': 93.07, 'cifar100': 75.87},
    'resnet18_se': {'cifar10': 95.12, 'cifar100': 76.44},
    'resnet18_gc': {'cifar10': 95.38, 'cifar100': 78.38, 'tinyimagenet': 65.98},
    'resnet18_nl': {'cifar10': 95.36, 'cifar100': 78.39, 'tinyimagenet': 65.64},
    'resnet18_spa': {'cifar10': 95.79, 'cifar100': 78.68, 'tinyimagenet': 66.44},
    'resnet50_cifar': {'cifar10': 93.65, 'cifar100': 78.16},
    'resnet50_se': {'cifar10': 95.14, 'cifar100': 78.58},
    'resnet50_gc': {'cifar10': 95.69, 'cifar100': 79.13},
    'resnet50_nl': {'cifar10': 95.37, 'cifar100': 79.15, 'tinyimagenet': 69.26},
    'resnet50_spa': {'cifar10': 95.65, 'cifar100': 79.47, 'tinyimagenet': 69.15},
}

# Table 2: CIFAR-100 top-1 (%) with the attention block after one stage, k = 2 for SPA (single runs)
TABLE2_TOP1 = {
    ('resnet18_nl', 1): 78.50, ('resnet18_nl', 2): 78.26, ('resnet18_nl', 3): 78.39, ('resnet18_nl', 4): 77.92,
    ('resnet50_nl', 1): 79.84, ('resnet50_nl', 2): 78.90, ('resnet50_nl', 3): 79.15, ('resnet50_nl', 4): 78.76,
    ('resnet18_spa', 1): 78.51, ('resnet18_spa', 2): 78.59, ('resnet18_spa', 3): 78.68, ('resnet18_spa', 4): 76.82,
    ('resnet50_spa', 1): 80.01, ('resnet50_spa', 2): 79.78, ('resnet50_spa', 3): 79.47, ('resnet50_spa', 4): 78.46,
}

# Table 3: CIFAR-100 top-1 (%) of resnet18_spa by k and stage; absent: "no measure" in the paper
TABLE3_TOP1 = {
    (2, 1): 78.51, (2, 2): 78.59, (2, 3): 78.68, (2, 4): 76.82,
    (4, 1): 78.47, (4, 2): 78.41, (4, 3): 78.18, (4, 4): 76.59,
    (8, 1): 78.52, (8, 2): 78.86, (8, 3): 78.44,
    (16, 1): 78.25, (16, 2): 77.97, (16, 3): 78.50,
    (32, 1): 78.31, (32, 2): 77.02,
}
