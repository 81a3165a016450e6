"""The paper's reported numbers (Fang, Li, Li; Table 1), quoted next to ours wherever we report."""

TITLE = 'Salient Positions based Attention Network for Image Classification'
AUTHORS = 'Sheng Fang, Kaiyu Li, Zhe Li'
CODE_URL = 'https://github.com/likyoo/SPANet'
BIBTEX = """@misc{fang_spanet,
  title  = {Salient Positions based Attention Network for Image Classification},
  author = {Fang, Sheng and Li, Kaiyu and Li, Zhe},
  note   = {Code: https://github.com/likyoo/SPANet}
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
