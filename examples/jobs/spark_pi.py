"""Estimates pi with PySpark on the cluster's standalone master.

    cloudtik submit examples/configs/spark.yaml examples/jobs/spark_pi.py [PARTITIONS]

spark-defaults.conf on the head names the master, so the session needs no URL.
"""
import random
import sys

from pyspark.sql import SparkSession

partitions = int(sys.argv[1]) if len(sys.argv) > 1 else 8
spark = SparkSession.builder.appName("spark-pi").getOrCreate()
n = 200000 * partitions


def inside(_):
    x, y = random.random(), random.random()
    return 1 if x * x + y * y <= 1 else 0


count = spark.sparkContext.parallelize(range(n), partitions).map(inside).sum()
print(f"pi is roughly {4.0 * count / n:.5f} ({partitions} partitions)")
spark.stop()
