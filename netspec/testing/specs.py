"""How the tests load every spec of specs/ small: inputs (and classes) a spec allows that keep a
whole-network run fast. alexnet's valid 11x11/4 conv and three valid 3x3/2 pools need at least
67 pixels; googlenet's final 7x7 average pool needs ceil(H / 32) >= 7, i.e. 193 pixels."""

SMALL = {
    "alexnet": dict(classes=10, input_shape=(3, 67, 67)),
    "googlenet": dict(classes=10, input_shape=(3, 193, 193)),
    "handson_conv3": dict(input_shape=(3, 40, 60)),
    "inception_naive": dict(input_shape=(32, 14, 14)),
    "inception_bottleneck": dict(input_shape=(32, 14, 14)),
    "mobilenet": dict(classes=10, input_shape=(3, 64, 64), alpha=0.5, multiplier=2),
    "vit_b_16": dict(classes=10, size=32, layers=2, hidden=32, mlp_dim=64, heads=4),
    "unet": dict(width=4, size=32),     # four halvings of 32: 2x2 at the bottom
    # the architecture zoo (issue 16) at 64 pixels (32 where the network has no global pool's
    # slack to spare), 10 classes; the exact counts are test_zoo's, at the published sizes
    # VGG's classifier at a width of 64: 120 million weights at 4096, which cost the sweeps of
    # every shipped spec minutes to draw, export and compile, and test nothing the convs do not
    "vgg19": dict(classes=10, input_shape=(3, 32, 32), hidden=64),
    "resnext50": dict(classes=10, input_shape=(3, 64, 64)),
    "regnet_y_400mf": dict(classes=10, input_shape=(3, 64, 64)),
    "mobilenet_v3_large": dict(classes=10, input_shape=(3, 64, 64)),
    "efficientnet_b0": dict(classes=10, input_shape=(3, 64, 64)),
    "shufflenet_v2": dict(classes=10, input_shape=(3, 64, 64)),
    "squeezenet1_1": dict(classes=10, input_shape=(3, 67, 67)),
    "deeplabv3_resnet50": dict(classes=3, size=48),
    "yolov8n": dict(classes=10, size=64),    # P5 at 2x2
    "convnext_tiny": dict(classes=10, input_shape=(3, 32, 32), width=16),   # 1x1 in the last stage
    "ssdlite320": dict(classes=10, size=64),     # six maps 4, 2, 1, 1, 1 and 1 wide
    # the deep classifiers at their smallest: five halvings of 32 leave 1x1 (Xception's entry
    # flow needs 71)
    "resnet34": dict(classes=10, input_shape=(3, 32, 32)),
    "resnet50": dict(classes=10, input_shape=(3, 32, 32)),
    "resnet152": dict(classes=10, input_shape=(3, 32, 32)),
    "vgg16": dict(classes=10, input_shape=(3, 32, 32), hidden=64),
    "xception": dict(classes=10, input_shape=(3, 71, 71)),
}
