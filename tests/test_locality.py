"""Data locality: in a deployment each data owner's node opens its own folder and nothing else."""

from __future__ import annotations

import shutil

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

import ffm.client
from ffm.config import job_to_run_config
from ffm.data import export_split, load_party, load_server_test, party_dir
from ffm.runtime import set_task_identity
from ffm.workspace import workspace_for


def test_exported_split_reads_back_as_the_same_examples_per_party(job_factory, tmp_path):
    data = workspace_for(job_factory()).data

    export_split(data, tmp_path / "split")

    for k, client in enumerate(data.clients):
        own = load_party(party_dir(tmp_path / "split", k)).clients[0]
        assert own.train["text"] == client.train["text"] and own.train["label"] == client.train["label"]
        assert own.val["text"] == client.val["text"] and own.val["label"] == client.val["label"]
    server = load_server_test(tmp_path / "split" / "server")
    assert server.test["text"] == data.test["text"] and server.label_names == data.label_names


def test_an_unlabelled_split_by_role_and_an_image_split_read_back_column_for_column(tmp_path):
    from ffm.config import DataConfig
    from ffm.data import load_source, split_federated

    shakespeare = DataConfig(source="tinyshakespeare", partitioner="natural", partition_column="role")
    digits = DataConfig(source="digits", partitioner="iid", max_examples=100)
    for name, cfg in (("roles", shakespeare), ("digits", digits)):
        data = split_federated(load_source(cfg), cfg, num_clients=3, seed=0)

        export_split(data, tmp_path / name)

        for k, client in enumerate(data.clients):
            own = load_party(party_dir(tmp_path / name, k)).clients[0]
            assert own.train.to_list() == client.train.to_list()


def test_a_node_with_its_data_path_trains_on_its_folder_alone(job_factory, tmp_path):
    # Prepare: export, give node 1 a private copy of its folder, destroy every other copy of any data.
    simulated = job_factory()
    expected = workspace_for(simulated)
    export_split(expected.data, tmp_path / "split")
    own = shutil.copytree(party_dir(tmp_path / "split", 1), tmp_path / "node-1-disk")
    shutil.rmtree(tmp_path / "split")
    deployed = job_factory("deployed", data__source="csv", data__path=str(tmp_path / "no-such-source.csv"))
    set_task_identity(run_id=1)
    context = Context(1, 2, {"partition-id": 1, "num-partitions": 3, "data-path": str(own)}, RecordDict(),
                      job_to_run_config(deployed))
    state = expected.initial_state
    msg = Message(RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})}),
                  2, MessageType.TRAIN)

    # Execute: the node can only have read its own folder: no other data exists any more.
    reply = ffm.client.app(msg, context)

    # Assert: it trained on exactly its partition: the same update as the simulated node 1 sends.
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    simulated_context = Context(1, 2, {"partition-id": 1, "num-partitions": 3}, RecordDict(),
                                job_to_run_config(simulated))
    simulated_reply = ffm.client.app(msg, simulated_context)
    got = reply.content["arrays"].to_torch_state_dict()
    want = simulated_reply.content["arrays"].to_torch_state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert reply.content["metrics"]["num-examples"] == len(expected.data.clients[1].train)
    assert reply.content["client"]["partition-id"] == 1
    assert workspace_for(deployed, str(own)).data.test is None
    assert any(not torch.equal(v, state[k]) for k, v in reply.content["arrays"].to_torch_state_dict().items())


def test_supernode_command_hands_the_node_its_own_folder_as_flower_parses_it(tmp_path):
    from flwr.common.config import parse_config_args

    from ffm.runtime.deploy import supernode_command

    cmd = supernode_command(superlink="127.0.0.1:9091", partition_id=2, num_partitions=3, runtime_port=9200,
                            tls=None, data_path=tmp_path / "owner 2")

    node_config = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node_config == {"partition-id": 2, "num-partitions": 3, "data-path": str(tmp_path / "owner 2")}


def test_ffm_deploy_split_writes_one_folder_per_owner_and_the_servers_test_set(tmp_path):
    from ffm.cli import main

    config = tmp_path / "job.yaml"
    config.write_text("data: {source: bbc_news, max_examples: 90, partitioner: iid}\nfederation: {num_clients: 3}\n")

    code = main(["deploy", "split", str(config), "--out", str(tmp_path / "split")])

    assert code == 0
    parties = [load_party(party_dir(tmp_path / "split", k)).clients[0] for k in range(3)]
    test = load_server_test(tmp_path / "split" / "server").test
    assert sum(len(p.train) + len(p.val) for p in parties) + len(test) == 90
    assert not (tmp_path / "split" / "partition-3").exists()
