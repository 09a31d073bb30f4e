"""The official Kubernetes Python client against skiff: list, create, watch pods."""
import sys
import threading
import time

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()

assert v1.list_namespaced_pod("default").items == [], "default namespace starts empty"

events = []
w = watch.Watch()


def follow():
    for ev in w.stream(v1.list_namespaced_pod, "default", timeout_seconds=15):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=follow)
t.start()
time.sleep(1)
pod = client.V1Pod(
    metadata=client.V1ObjectMeta(name="py-pod", labels={"from": "python"}),
    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="skiff.local/pause")]),
)
created = v1.create_namespaced_pod("default", pod)
assert created.metadata.uid, "server assigns a uid"
assert created.status.phase == "Pending"
listed = v1.list_namespaced_pod("default", label_selector="from=python")
assert [p.metadata.name for p in listed.items] == ["py-pod"]
v1.delete_namespaced_pod("py-pod", "default")
t.join(20)
assert ("ADDED", "py-pod") in events and ("DELETED", "py-pod") in events, events
print("python client: list, create, watch, delete ok")
