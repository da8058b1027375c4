"""The consumers' delivery policies as the server gets them: pinned, so a refactoring that
changes a durable name, a try count or a limit fails here first."""

from nats.js.api import AckPolicy, DeliverPolicy

from imgate_common.consumers import reply_consumer_spec, router_consumer_spec, runner_consumer_spec


def test_a_router_partition_lets_one_message_out_at_a_time() -> None:
    spec = router_consumer_spec(3)
    config = spec.config()
    assert (spec.stream, config.durable_name) == ("IM_INBOUND", "router-p3")
    assert config.filter_subject == "im.inbound.*.*.3"
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (30.0, 10, 1)
    assert (config.ack_policy, config.deliver_policy, config.inactive_threshold) == (
        AckPolicy.EXPLICIT,
        DeliverPolicy.ALL,
        None,
    )
    assert spec.backoff_s == (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
    assert [spec.retry_delay(n) for n in (0, 1, 7, 8, 20)] == [1.0, 1.0, 120.0, 120.0, 120.0]


def test_runners_share_one_consumer_of_every_run() -> None:
    spec = runner_consumer_spec(45.0)
    config = spec.config()
    assert (spec.stream, config.durable_name) == ("AGENT_RUNS", "agent-runner")
    assert config.filter_subject == "agent.run.>"
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (45.0, 8, None)
    assert config.deliver_policy == DeliverPolicy.ALL
    assert spec.backoff_s == (2.0, 5.0, 15.0, 30.0, 60.0)


def test_a_channels_reply_consumer_starts_at_new_events_and_goes_when_unread() -> None:
    spec = reply_consumer_spec(7, 10.0)
    config = spec.config()
    assert (spec.stream, config.durable_name) == ("AGENT_REPLIES", "replies-7")
    assert config.filter_subject == "agent.reply.7.>"
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (10.0, 38, 1024)
    assert (config.deliver_policy, config.inactive_threshold) == (DeliverPolicy.NEW, 24 * 3600)
    assert spec.backoff_s == (2.0, 5.0, 10.0, 30.0, 60.0)
