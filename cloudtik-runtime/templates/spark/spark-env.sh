# Written by `cloudtik-node runtime configure spark`; rewritten on every setup.
# Sourced by Spark's scripts (spark-submit, pyspark, spark-class).
export SPARK_HOME={{spark_home}}
export PYSPARK_PYTHON={{python}}
export SPARK_DAEMON_MEMORY=${SPARK_DAEMON_MEMORY:-{{daemon_memory}}}
