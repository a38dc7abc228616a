"""A DAG of the cncf-kubernetes provider's own KubernetesPodOperator, for tests/dags/test_kubernetes_pod_operator.py:
a command's output in the task log, an XCom from the pod (the provider's alpine sidecar, read by exec), a failing
command; ``record`` writes what happened to $KPO_RECORD for the test to read."""
import json
import os

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, task

with DAG("kpo_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    common = dict(namespace="default", kubernetes_conn_id="kubernetes_default", get_logs=True,
                  on_finish_action="delete_pod", startup_timeout_seconds=120)
    echo = KubernetesPodOperator(task_id="echo", name="echo", image="busybox:1.36",
                                 cmds=["sh", "-c", "echo hello from $(hostname)"], **common)
    pushed = KubernetesPodOperator(
        task_id="pushed", name="pushed", image="busybox:1.36", do_xcom_push=True,
        cmds=["sh", "-c", "mkdir -p /airflow/xcom && echo '{\"answer\": 42}' > /airflow/xcom/return.json"], **common)
    fails = KubernetesPodOperator(task_id="fails", name="fails", image="busybox:1.36",
                                  cmds=["sh", "-c", "echo about to fail; exit 3"], **common)

    @task(trigger_rule="all_done")
    def record(**context):
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["echo", "pushed", "fails"],
                                    run_ids=[ti.run_id])[ti.run_id]
        with open(os.environ["KPO_RECORD"], "w") as f:
            json.dump({"xcom": ti.xcom_pull(task_ids="pushed"), "states": states}, f)

    [echo, pushed, fails] >> record()
