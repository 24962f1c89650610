use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

/// Hearth: longer topics are matched every time rather than remembered, so
/// the cache of matches is bounded in bytes as well as in entries.
const MAX_REMEMBERED_TOPIC_LEN: usize = 256;

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
    /// Hearth: `client_key` of the client that published it (0: unknown),
    /// for No Local subscriptions (5 §3.8.3.1).
    pub publisher: u64,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
            publisher: 0,
        }
    }
}

/// Hearth: a client id as a number, to mark what each client published
/// without keeping its id with every message (never 0).
pub(crate) fn client_key(client_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    h.finish().max(1)
}

// TODO: remove this from here
impl Storage for PublishData {
    fn size(&self) -> usize {
        let publish = &self.publish;
        // Hearth: and what holding it costs besides its bytes (the entry
        // itself, its properties), so the byte budgets bound memory.
        ENTRY_OVERHEAD
            + publish.topic.len()
            + publish.payload.len()
            + self.properties.as_ref().map_or(0, properties_len)
    }
}

/// Hearth: bytes a log entry costs besides its topic and payload: the
/// entry (checked below) and, when it has them, its properties' heap.
pub const ENTRY_OVERHEAD: usize = 512;

/// Hearth: the heap a publish's properties hold (strings with their
/// allocation's header).
fn properties_len(p: &PublishProperties) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 24);
    string(&p.response_topic)
        + string(&p.content_type)
        + p.correlation_data.as_ref().map_or(0, |c| c.len() + 32)
        + p.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
        + p.subscription_identifiers.len() * 8
}

/// Hearth: whether a filter matches more than the one topic it names.
fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Hearth: the filter whose log a subscription reads: `f` for a shared
/// subscription `$share/<group>/f` (5 §4.8.2), the filter itself otherwise.
pub fn log_filter(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path, |(_, inner)| inner)
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
    /// Hearth: the filters with a wildcard (`+`, `#`). A filter without one
    /// matches exactly its own topic, found in `filter_indexes` by a lookup;
    /// only these are matched one by one. Upstream matched every topic it
    /// had not remembered against every filter: with 200 devices × 128
    /// filters, each retained message to a topic nobody subscribes to cost
    /// 25,600 comparisons, and the router stopped answering for seconds.
    wildcard_filters: Vec<(Filter, FilterIdx)>,
    /// Hearth: bytes held by all logs together (see `RouterConfig::max_log_bytes`).
    held_bytes: u64,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let retained_publishes = HashMap::new();
        let publish_filters = HashMap::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                filter_indexes.insert(filter, idx);
            }
        }

        let wildcard_filters = filter_indexes
            .iter()
            .filter(|(f, _)| has_wildcards(f))
            .map(|(f, i)| (f.clone(), *i))
            .collect();
        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            retained_publishes,
            held_bytes: 0,
            wildcard_filters,
        })
    }

    /// Hearth: appends to one filter's log, then holds all logs together to
    /// `max_log_bytes` by taking the oldest segment of the largest log. Each
    /// log alone is bounded by its segments; without this, a hub with many
    /// busy filters held each one's full log. The log just appended to is
    /// passed over while its only segment is the one holding the new
    /// message: taking it would drop that message at once while older ones
    /// stay in other logs (the memory budget run: with offline sessions'
    /// queues at the bound, no large packet reached its live subscriber).
    pub fn append(
        &mut self,
        filter_idx: FilterIdx,
        item: PublishData,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> Option<Offset> {
        let data = self.native.get_mut(filter_idx)?;
        let before = data.log.bytes();
        let (offset, _) = data.append(item, notifications);
        self.held_bytes = self.held_bytes - before + data.log.bytes();
        if let Some(max) = self.config.max_log_bytes {
            while self.held_bytes > max {
                let largest = self
                    .native
                    .iter()
                    .filter(|(idx, d)| *idx != filter_idx || d.log.memory_segments_count() > 1)
                    .filter(|(_, d)| d.log.bytes() > 0)
                    .max_by_key(|(_, d)| d.log.bytes())
                    .map_or(filter_idx, |(idx, _)| idx);
                let Some(largest) = self.native.get_mut(largest) else {
                    break;
                };
                let freed = largest.log.evict_oldest();
                if freed == 0 {
                    break;
                }
                self.held_bytes -= freed;
            }
        }
        Some(offset)
    }

    /// Hearth: bytes held by all logs together.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Hearth: forgets a filter nobody subscribes to any more: its log, its
    /// index and its place in the remembered topics. Upstream kept every
    /// filter ever subscribed, so subscribing to ever new filters grew the
    /// broker without bound. The caller makes sure no request or waiter
    /// still names it (its slot may be reused by the next new filter).
    pub fn remove_filter(&mut self, filter: &str) {
        let Some(idx) = self.filter_indexes.remove(filter) else {
            return;
        };
        if let Some(data) = self.native.try_remove(idx) {
            self.held_bytes -= data.log.bytes();
        }
        // Hearth: a filter without wildcards is remembered only under its
        // own topic; only a wildcard filter needs every topic looked at.
        if has_wildcards(filter) {
            self.wildcard_filters.retain(|(_, i)| *i != idx);
            self.publish_filters.retain(|_, filters| {
                filters.retain(|i| *i != idx);
                !filters.is_empty()
            });
        } else if let Some(filters) = self.publish_filters.get_mut(filter) {
            filters.retain(|i| *i != idx);
            if filters.is_empty() {
                self.publish_filters.remove(filter);
            }
        }
    }

    /// Hearth: the index of a filter's log, if it has one.
    pub fn filter_index(&self, filter: &str) -> Option<FilterIdx> {
        self.filter_indexes.get(filter).copied()
    }

    /// Hearth: how many filters have a log (for tests of the bound above).
    pub fn filter_count(&self) -> usize {
        self.filter_indexes.len()
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        // Hearth: a shared subscription (`$share/g/f`) waits on the log of
        // its inner filter `f`, and one connection may wait there for both
        // `f` and `$share/g/f`: the waiter is found by its own filter.
        // Upstream looked up `$share/g/f`'s log, found none and left the
        // waiter, which kept delivering after UNSUBSCRIBE.
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(log_filter(filter))?)?;
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|(conn_id, request)| *conn_id == id && request.filter == *filter)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                // Hearth: the exact filter by lookup, then the wildcard
                // filters (see `wildcard_filters`).
                let mut v: Vec<usize> = self
                    .filter_indexes
                    .get(topic)
                    .copied()
                    .into_iter()
                    .collect();
                v.extend(
                    self.wildcard_filters
                        .iter()
                        .filter(|(filter, _)| matches(topic, filter))
                        .map(|(_, filter_idx)| *filter_idx),
                );

                // Hearth: remembered within a bound, and only for topics of
                // ordinary length (one client publishing thousands of unique
                // 64 KiB topics grew the broker by 180 MiB for good). A topic
                // that is not remembered is matched again when it recurs.
                if !v.is_empty() && topic.len() <= MAX_REMEMBERED_TOPIC_LEN {
                    if let Some(max) = self.config.max_remembered_topics {
                        if self.publish_filters.len() >= max {
                            let evicted = self.publish_filters.keys().next().cloned();
                            if let Some(evicted) = evicted {
                                self.publish_filters.remove(&evicted);
                            }
                        }
                    }
                    if self.config.max_remembered_topics != Some(0) {
                        self.publish_filters.insert(topic.to_owned(), v.clone());
                    }
                }

                Some(v)
            }
        }
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);

                // Match new filter to existing topics and add to publish_filters if it matches
                // Hearth: a filter without wildcards can only be its own
                // topic's (upstream matched it against every remembered
                // topic, 4,096 comparisons per SUBSCRIBE).
                if has_wildcards(filter) {
                    self.wildcard_filters.push((filter.to_owned(), idx));
                    for (topic, filters) in publish_filters.iter_mut() {
                        if matches(topic, filter) {
                            filters.push(idx);
                        }
                    }
                } else if let Some(filters) = publish_filters.get_mut(filter) {
                    filters.push(idx);
                }

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        filter: &str,
        offset: Offset,
        len: u64,
        max_bytes: usize,
        not_from: Option<u64>,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // Hearth: filters nobody subscribes to are removed (`remove_filter`)
        // and their slot reused, so a request whose log is gone, or whose
        // slot now holds another filter's log, reads nothing: it must never
        // deliver another filter's messages. Upstream unwrapped.
        let Some(data) = self
            .native
            .get(filter_idx)
            .filter(|data| data.filter == log_filter(filter))
        else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "filter gone"));
        };
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let mut next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Hearth: a No Local subscription skips its own client's messages.
            if not_from.is_some_and(|me| me == pubdata.publisher) {
                return false;
            }
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // Hearth: no more than `max_bytes` of publishes (`Publish::len`), but
        // always one message; the cursor stops before the first left.
        let mut bytes = 0;
        let kept = o
            .iter()
            .position(|(pubdata, _)| {
                let over = bytes > 0 && bytes >= max_bytes;
                bytes += pubdata.publish.len();
                over
            })
            .unwrap_or(o.len());
        if kept < o.len() {
            let (Position::Next { start, .. } | Position::Done { start, .. }) = next;
            next = Position::Next {
                start,
                end: o[kept].1,
            };
            o.truncate(kept);
        }

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        // Hearth: unless its log is gone (see `native_readv`).
        if let Some(data) = self
            .native
            .get_mut(request.filter_idx)
            .filter(|data| data.filter == log_filter(&request.filter))
        {
            data.waiters.register(id, request);
        }
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // Hearth: only the messages this filter matches are looked at (and
        // expired ones among them forgotten): for a filter without
        // wildcards, the one retained message under its own topic. Upstream
        // went through every retained message on every SUBSCRIBE, twice
        // (once to expire, once to match): a device resubscribing its 128
        // filters to a hub holding 10,000 retained messages cost 2.5 million
        // comparisons. Upstream also took the time waited off the stored
        // message's expiry interval on every read, so each read shortened
        // it again; the stored message now stays as published.
        let (found, expired) = if has_wildcards(filter) {
            let mut found = Vec::new();
            let mut expired = Vec::new();
            for (topic, pubdata) in self.retained_publishes.iter() {
                if !matches(topic, filter) {
                    continue;
                }
                match unexpired(pubdata, now) {
                    Some(p) => found.push(p),
                    None => expired.push(topic.clone()),
                }
            }
            (found, expired)
        } else {
            match self.retained_publishes.get(filter) {
                Some(pubdata) => match unexpired(pubdata, now) {
                    Some(p) => (vec![p], Vec::new()),
                    None => (Vec::new(), vec![filter.to_owned()]),
                },
                None => (Vec::new(), Vec::new()),
            }
        };
        for topic in expired {
            self.retained_publishes.remove(&topic);
        }
        found
    }
}

/// Hearth: a retained message as it is to be sent now, its expiry interval
/// less the time it waited (5 §3.3.2.3.3), or `None` once it has expired.
fn unexpired(pubdata: &PublishData, now: Instant) -> Option<PubWithProp> {
    let mut properties = pubdata.properties.clone();
    if let Some(interval) = properties
        .as_mut()
        .and_then(|p| p.message_expiry_interval.as_mut())
    {
        let waited = u32::try_from((now - pubdata.timestamp).as_secs()).unwrap_or(u32::MAX);
        if waited >= *interval {
            return None;
        }
        *interval -= waited;
    }
    Some((pubdata.publish.clone(), properties))
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        // Hearth: allocated when a connection first waits, not 10 waiters
        // (~1 KiB) for every filter up front.
        let waiters = Waiters::with_capacity(0);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        // Hearth: the waiters keep their room (issue 20; `wake_into`).
        self.waiters.wake_into(notifications);

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        AckLog {
            // Hearth: allocated on first use, not per idle connection.
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn the_entry_overhead_covers_an_entry() {
        let entry = std::mem::size_of::<super::PublishData>();
        assert!(entry <= super::ENTRY_OVERHEAD / 2, "{entry} bytes");
    }

    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            ..RouterConfig::default()
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            ..RouterConfig::default()
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    fn datalog() -> DataLog {
        DataLog::new(RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            max_remembered_topics: Some(4096),
            ..RouterConfig::default()
        })
        .unwrap()
    }

    fn publish(topic: &str) -> crate::protocol::Publish {
        crate::protocol::Publish::new(topic.to_owned(), "retained telemetry".to_owned(), true)
    }

    #[test]
    fn over_the_hub_wide_bound_older_messages_go_before_the_one_just_published() {
        let mut data = DataLog::new(RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 2,
            max_outgoing_packet_count: 1024,
            max_remembered_topics: Some(4096),
            max_log_bytes: Some(4 * 1024),
            ..RouterConfig::default()
        })
        .unwrap();
        let (queued, _) = data.next_native_offset("queued");
        let (live, _) = data.next_native_offset("live");
        let mut notifications = std::collections::VecDeque::new();
        let item = |topic: &str, len: usize| {
            let publish = crate::protocol::Publish::new(topic.to_owned(), "x".repeat(len), false);
            super::PublishData::from((publish, None))
        };
        // An offline session's queue fills the hub-wide bound.
        for _ in 0..8 {
            data.append(queued, item("queued", 500), &mut notifications);
        }
        // One large message for a live subscriber: a segment of its own,
        // the largest log once appended.
        data.append(live, item("live", 3000), &mut notifications);
        assert!(
            data.native[live].log.bytes() >= 3000,
            "the new message was dropped at once"
        );
        assert!(data.held_bytes() <= 4 * 1024, "{}", data.held_bytes());
    }

    #[test]
    fn a_read_stops_at_its_byte_bound_but_takes_one_message_and_the_next_read_goes_on() {
        let mut data = datalog();
        let (idx, _) = data.next_native_offset("big");
        let mut notifications = std::collections::VecDeque::new();
        for payload in ["a", "b", "c", "d"] {
            let publish = crate::protocol::Publish::new("big".to_owned(), payload.repeat(300), false);
            data.append(idx, super::PublishData::from((publish, None)), &mut notifications);
        }
        let payloads = |read: &[(super::PubWithProp, super::Offset)]| -> String {
            read.iter().map(|((p, _), _)| char::from(p.payload[0])).collect()
        };
        // 305 bytes a message (`Publish::len`): the third would pass 700.
        let (next, read) = data.native_readv(idx, "big", (0, 0), 100, 700, None).unwrap();
        assert_eq!(payloads(&read), "abc");
        let super::Position::Next { end, .. } = next else {
            panic!("a read cut short is not caught up: {next:?}");
        };
        let (_, read) = data.native_readv(idx, "big", end, 100, 10, None).unwrap();
        assert_eq!(payloads(&read), "d", "one message whatever the bound");
    }

    #[test]
    fn a_filter_nobody_published_to_reserves_nothing() {
        let mut data = datalog();
        let (idx, _) = data.next_native_offset("hearth/v1/dev/a/cmd/x");
        let filter = data.native.get_mut(idx).unwrap();
        assert_eq!(filter.log.reserved(), 0);
        assert_eq!(filter.waiters.get_mut().capacity(), 0);
    }

    #[test]
    fn exact_and_wildcard_filters_match_as_before() {
        let mut data = datalog();
        let (exact, _) = data.next_native_offset("a/b");
        let (plus, _) = data.next_native_offset("a/+");
        let (hash, _) = data.next_native_offset("#");
        let (dollar, _) = data.next_native_offset("$sys/b");
        let sorted = |mut v: Vec<usize>| {
            v.sort_unstable();
            v
        };
        let mut want = vec![exact, plus, hash];
        want.sort_unstable();
        assert_eq!(sorted(data.matches("a/b").unwrap()), want);
        // Remembered now: a new exact filter joins its own topic only.
        let (other, _) = data.next_native_offset("a/c");
        assert_eq!(sorted(data.matches("a/b").unwrap()), want);
        assert_eq!(sorted(data.matches("$sys/b").unwrap()), vec![dollar]);
        let mut want_c = vec![other, plus, hash];
        want_c.sort_unstable();
        assert_eq!(sorted(data.matches("a/c").unwrap()), want_c);
        data.remove_filter("a/b");
        data.remove_filter("#");
        assert_eq!(data.matches("a/b").unwrap(), vec![plus]);
        data.remove_filter("a/+");
        assert!(data.matches("a/b").unwrap().is_empty());
        assert_eq!(data.matches("a/c").unwrap(), vec![other]);
    }

    /// 200 devices × 100 filters without wildcards; topics nobody
    /// subscribes to (retained telemetry) are published and every filter is
    /// subscribed again with retained messages present. Upstream compared
    /// each publish with every filter and each SUBSCRIBE with every retained
    /// message: tens of millions of comparisons, seconds of a router that
    /// answers nobody meanwhile. Bounded generously for a loaded debug build.
    #[test]
    fn many_exact_filters_and_retained_messages_cost_lookups_not_scans() {
        let mut data = datalog();
        let filters: Vec<String> = (0..200)
            .flat_map(|d| (0..100).map(move |k| format!("hearth/v1/dev/{d:026}/cmd/b{k}")))
            .collect();
        let start = std::time::Instant::now();
        for f in &filters {
            data.next_native_offset(f);
        }
        for d in 0..200 {
            for k in 0..10 {
                let topic = format!("hearth/v1/dev/{d:026}/tele/retained{k}");
                assert!(data.matches(&topic).unwrap().is_empty());
                data.insert_to_retained_publishes(publish(&topic), None, topic);
            }
        }
        for f in filters.iter().step_by(10) {
            assert!(data.read_retained_messages(f).is_empty());
        }
        let took = start.elapsed();
        let topic = format!("hearth/v1/dev/{:026}/tele/retained3", 7);
        let found = data.read_retained_messages(&topic);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.topic, topic.as_bytes());
        let all = data.read_retained_messages(&format!("hearth/v1/dev/{:026}/tele/#", 7));
        assert_eq!(all.len(), 10);
        assert!(
            took < std::time::Duration::from_millis(1500),
            "{took:?} for 20,000 filters, 2,000 publishes, 2,000 subscribes"
        );
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
