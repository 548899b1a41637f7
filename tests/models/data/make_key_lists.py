"""Writes the recorded state-dict key/shape lists the model tests check against:

- iresnet_keys.json: insightface arcface_torch iresnet18/34/50/100 `backbone.pth` keys, written
  from that definition's facts (recognition/arcface_torch/backbones/iresnet.py): conv1 (64,3,3,3);
  bn1; prelu (64,); layerL.i.{bn1, conv1, bn2, prelu, conv2, bn3} with layers of 64/128/256/512
  planes and block counts (2,2,2,2) / (3,4,6,3) / (3,4,14,3) / (3,13,30,3); downsample.0 (1x1
  conv) and downsample.1 (BN) on every layer's first block (each layer strides 2); bn2 (512);
  fc (512, 512*7*7) with bias; features = BatchNorm1d(512).
- deep3d_net_recon_keys.json: Deep3DFaceRecon_pytorch `net_recon` (ReconNetWrapper, resnet50,
  use_last_fc=False) keys: backbone.* = torchvision ResNet-50 without fc (Bottleneck v1.5,
  layers (3,4,6,3), expansion 4), final_layers.0..6 = 1x1 convs 2048 -> 80, 64, 80, 3, 27, 2, 1
  with bias.

Independent of wscswap_fast's modules on purpose. Run: python tests/models/data/make_key_lists.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def bn(prefix, c, out):
    out += [[f"{prefix}.weight", [c]], [f"{prefix}.bias", [c]], [f"{prefix}.running_mean", [c]],
            [f"{prefix}.running_var", [c]], [f"{prefix}.num_batches_tracked", []]]


def iresnet(blocks):
    out = [["conv1.weight", [64, 3, 3, 3]]]
    bn("bn1", 64, out)
    out.append(["prelu.weight", [64]])
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes
            bn(f"{p}.bn1", cin, out)
            out.append([f"{p}.conv1.weight", [planes, cin, 3, 3]])
            bn(f"{p}.bn2", planes, out)
            out.append([f"{p}.prelu.weight", [planes]])
            out.append([f"{p}.conv2.weight", [planes, planes, 3, 3]])
            bn(f"{p}.bn3", planes, out)
            if b == 0:
                out.append([f"{p}.downsample.0.weight", [planes, cin, 1, 1]])
                bn(f"{p}.downsample.1", planes, out)
        inplanes = planes
    bn("bn2", 512, out)
    out += [["fc.weight", [512, 512 * 7 * 7]], ["fc.bias", [512]]]
    bn("features", 512, out)
    return out


def resnet50_net_recon():
    out = [["backbone.conv1.weight", [64, 3, 7, 7]]]
    bn("backbone.bn1", 64, out)
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(n):
            p = f"backbone.layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            out.append([f"{p}.conv1.weight", [planes, cin, 1, 1]])
            bn(f"{p}.bn1", planes, out)
            out.append([f"{p}.conv2.weight", [planes, planes, 3, 3]])
            bn(f"{p}.bn2", planes, out)
            out.append([f"{p}.conv3.weight", [planes * 4, planes, 1, 1]])
            bn(f"{p}.bn3", planes * 4, out)
            if b == 0:  # layer1 changes channels 64 -> 256, the others stride 2
                out.append([f"{p}.downsample.0.weight", [planes * 4, cin, 1, 1]])
                bn(f"{p}.downsample.1", planes * 4, out)
        inplanes = planes * 4
    for i, k in enumerate((80, 64, 80, 3, 27, 2, 1)):
        out += [[f"final_layers.{i}.weight", [k, 2048, 1, 1]], [f"final_layers.{i}.bias", [k]]]
    return out


def write(name, obj):
    path = os.path.join(HERE, name)
    tmp = path + ".tmp"
    # one key per line: {arch: {key: shape}}, readable in a diff
    lines = ["{"]
    for i, (arch, keys) in enumerate(obj.items()):
        lines.append(f"{json.dumps(arch)}: {{")
        lines += [f"  {json.dumps(k)}: {json.dumps(shape)}" + ("," if j < len(keys) - 1 else "")
                  for j, (k, shape) in enumerate(keys)]
        lines.append("}" + ("," if i < len(obj) - 1 else ""))
    lines.append("}")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    write("iresnet_keys.json", {name: iresnet(blocks) for name, blocks in
                                (("iresnet18", (2, 2, 2, 2)), ("iresnet34", (3, 4, 6, 3)),
                                 ("iresnet50", (3, 4, 14, 3)), ("iresnet100", (3, 13, 30, 3)))})
    write("deep3d_net_recon_keys.json", {"resnet50": resnet50_net_recon()})
