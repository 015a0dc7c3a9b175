"""Runs 1-CPU Ray tasks on the cluster and says which nodes ran them.

    cloudtik submit examples/configs/ray.yaml examples/jobs/ray_tasks.py [TASKS] [SECONDS]

More tasks than the cluster's CPUs wait, and the controller adds workers for them.
"""
import collections
import sys
import time

import ray

tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 8
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
ray.init(address="auto")


@ray.remote(num_cpus=1)
def work(i):
    time.sleep(secs)
    return ray.util.get_node_ip_address()


t0 = time.time()
nodes = collections.Counter(ray.get([work.remote(i) for i in range(tasks)]))
print(f"{tasks} tasks in {time.time() - t0:.0f} s on {len(nodes)} nodes: {dict(nodes)}")
