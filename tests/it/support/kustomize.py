"""Renders deploy/kubernetes as `kubectl kustomize` would, for the fields its kustomization.yaml
uses (resources, labels with includeSelectors, configMapGenerator from files, images), and
refuses any other field, so the test can never pass over something it did not render. Debian 12
has no kubectl recent enough for this kustomization (kubernetes-client is 1.20) and no registry
ships kustomize here, so tests/it/deploy.rs renders with this instead. Prints the objects as one
YAML stream."""
import hashlib
import json
import os
import sys

import yaml

root = sys.argv[1]
kustomization = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
rendered_fields = {"apiVersion", "kind", "labels", "resources", "configMapGenerator", "images"}
unknown = sorted(set(kustomization) - rendered_fields)
if unknown:
    sys.exit(f"kustomization.yaml uses fields this renderer does not render: {unknown}")

objects = []
for resource in kustomization.get("resources", []):
    objects += [o for o in yaml.safe_load_all(open(os.path.join(root, resource))) if o]

# A generated ConfigMap's name ends in a hash of its content, and references follow it.
generated = {}
for generator in kustomization.get("configMapGenerator", []):
    unknown = sorted(set(generator) - {"name", "files"})
    if unknown:
        sys.exit(f"configMapGenerator fields this renderer does not render: {unknown}")
    data = {os.path.basename(f): open(os.path.join(root, f)).read() for f in generator["files"]}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{generator['name']}-{digest}"
    generated[generator["name"]] = name
    objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})

for obj in objects:
    kind, spec = obj["kind"], obj.get("spec", {})
    for label in kustomization.get("labels", []):
        pairs = label["pairs"]
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if label.get("includeSelectors"):
            if kind == "Service":
                spec.setdefault("selector", {}).update(pairs)
            if kind in ("Deployment", "PodDisruptionBudget"):
                spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
            if kind == "Deployment":
                spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if kind == "Deployment":
        pod = spec["template"]["spec"]
        for volume in pod.get("volumes", []):
            config_map = volume.get("configMap")
            if config_map and config_map["name"] in generated:
                config_map["name"] = generated[config_map["name"]]
        for container in pod.get("containers", []):
            for image in kustomization.get("images", []):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"

print(yaml.safe_dump_all(objects, sort_keys=False))
