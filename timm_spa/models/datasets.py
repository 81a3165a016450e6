"""What the models know about the data sets their weights are trained on: class names, input size, mean/std.

The one place these live: the pretrained configs (`cifar_resnet`) and the data loaders (`train.data`) both
read them. Tiny-ImageNet's classes are its `wnids.txt` in file order (the label order) with the text
`words.txt` gives each; `tests/test_train_data.py` checks them against a real copy of the archive.
"""
import pkgutil
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['CIFAR10_CLASSES', 'CIFAR100_CLASSES', 'DATASET_CFGS', 'TINY_IMAGENET_CLASSES']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = (  # the fine labels, in label order
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle', 'bowl', 'boy',
    'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock',
    'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest',
    'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion', 'lizard',
    'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid',
    'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum',
    'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper',
    'snail', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone',
    'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf',
    'woman', 'worm')

# (WordNet id, words.txt text) in wnids.txt order, kept as package data the way timm keeps ImageNet's synsets
TINY_IMAGENET_CLASSES = tuple(
    tuple(line.split('\t')) for line in
    pkgutil.get_data(__name__, 'tiny_imagenet_classes.txt').decode('utf-8').splitlines())

# per data set: the pretrained config fields that describe it (timm's names)
DATASET_CFGS: Dict[str, Dict[str, Any]] = {
    'cifar10': dict(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2470, 0.2435, 0.2616), label_names=CIFAR10_CLASSES),
    'cifar100': dict(num_classes=100, input_size=(3, 32, 32), pool_size=(4, 4), mean=(0.5071, 0.4865, 0.4409),
                     std=(0.2673, 0.2564, 0.2762), label_names=CIFAR100_CLASSES),
    'tinyimagenet': dict(
        num_classes=200, input_size=(3, 64, 64), pool_size=(8, 8), mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        # readable names (the first of words.txt's synonyms), and timm's descriptions keyed by them
        label_names=tuple(text.split(',')[0] for _, text in TINY_IMAGENET_CLASSES),
        label_descriptions={text.split(',')[0]: f'{text} ({wnid})' for wnid, text in TINY_IMAGENET_CLASSES}),
}
