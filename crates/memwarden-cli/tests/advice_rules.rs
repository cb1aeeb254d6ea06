//! The advice engine on real workloads: `memwarden run --profile --json` on small Python
//! programs, each made to trigger one rule at a marked line (`# @name`), and a clean
//! streaming program that must get no advice at all. Sampled mode (the default) unless a
//! test says otherwise; every size is many sampling intervals, so sampling cannot miss it.

mod util;

use serde_json::Value;
use util::{line_of, python, run_script, Run};

/// The report's advice.
fn advice(run: &Run) -> Vec<Value> {
    assert!(
        run.report()["profile"].is_object(),
        "no profile: {}",
        run.stderr()
    );
    run.report()["advice"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no advice list: {:#}", run.report()))
}

/// The advice of `rule` at workload.py's line marked `marker`; fails, showing all advice,
/// when there is none.
fn advice_at<'a>(all: &'a [Value], rule: &str, script: &str, marker: &str) -> &'a Value {
    let line = line_of(script, marker);
    all.iter()
        .find(|a| {
            a["rule"] == rule
                && a["frame"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("workload.py"))
                && a["frame"]["line"].as_u64() == Some(line)
        })
        .unwrap_or_else(|| panic!("no {rule} advice at workload.py:{line}: {all:#?}"))
}

fn rules(all: &[Value]) -> Vec<&str> {
    all.iter().filter_map(|a| a["rule"].as_str()).collect()
}

const STREAM: &str = "\
import numpy as np
# Written through a file mapping, so that the heap peaks at the load, not here.
out = np.lib.format.open_memmap('big.npy', mode='w+', shape=(150 * 1024 * 1024 // 8,))
out[:] = 1.0
del out
def total():
    data = np.load('big.npy')  # @load
    return float(data.sum())
print(total())
";

#[test]
fn a_whole_array_load_is_told_to_stream_at_the_users_line() {
    let run = run_script(&["--profile"], &python(), STREAM, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let stream = advice_at(&all, "stream", STREAM, "load");
    assert_eq!(stream["source"], "data = np.load('big.npy')  # @load");
    assert!(stream["fix"]
        .as_str()
        .unwrap_or("")
        .contains("mmap_mode='r'"));
    assert!(stream["evidence"]
        .as_str()
        .unwrap_or("")
        .contains("sampled estimate"));
    let saving = stream["saving_bytes"].as_u64().unwrap_or(0);
    assert!(saving >= 140 << 20, "saving {saving}");
    assert!(
        run.stderr().contains("Stream instead of materialising"),
        "the summary shows it: {}",
        run.stderr()
    );
}

const SERIALIZATION: &str = "\
import numpy as np, pickle, time
with open('model.pkl', 'wb') as f:
    pickle.dump({'w': np.ones(150 * 1024 * 1024 // 8)}, f, protocol=5)
def load():
    with open('model.pkl', 'rb') as f:
        model = pickle.loads(f.read())  # @load
    # Held long enough after the load for the timeline to see what it settles at.
    time.sleep(1.0)
    return float(model['w'].sum())
print(load())
";

#[test]
fn a_load_holding_its_bytes_and_its_objects_is_told_to_map() {
    let run = run_script(&["--profile"], &python(), SERIALIZATION, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let copy = advice_at(&all, "serialization", SERIALIZATION, "load");
    assert!(copy["fix"]
        .as_str()
        .unwrap_or("")
        .contains("memwarden inspect FILE"));
    let saving = copy["saving_bytes"].as_u64().unwrap_or(0);
    assert!(
        (120 << 20..=180 << 20).contains(&saving),
        "the second copy is the payload, 150 MiB: {saving}"
    );
    assert!(
        !all.iter().any(|a| a["rule"] == "stream"),
        "the serialization advice stands for stream's on that line: {all:#?}"
    );
}

const LIST_OF_GENERATOR: &str = "\
def numbers(n):
    for i in range(n):
        yield i * 1.5
def main():
    values = list(numbers(4_000_000))  # @list
    print(sum(values))
main()
";

/// The items a generator makes are charged to the generator's line; the line that puts
/// them all in a list holds them.
#[test]
fn a_list_of_a_generators_items_is_told_to_stream_at_the_line_that_builds_it() {
    for mode in ["--profile", "--profile=exact"] {
        let run = run_script(&[mode], &python(), LIST_OF_GENERATOR, &[]);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        let all = advice(&run);
        let stream = advice_at(&all, "stream", LIST_OF_GENERATOR, "list");
        let saving = stream["saving_bytes"].as_u64().unwrap_or(0);
        assert!(
            saving >= 100 << 20,
            "{mode}: the list and its floats: {saving}"
        );
    }
}

const HELD_AT_EXIT: &str = "\
import numpy as np
cache = {}
def fill():
    for i in range(10):
        cache[i] = np.ones(20 * 1024 * 1024 // 8)  # @cache
fill()
print(len(cache))
";

#[test]
fn memory_held_at_exit_is_told_to_be_released() {
    let run = run_script(&["--profile"], &python(), HELD_AT_EXIT, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let release = advice_at(&all, "release", HELD_AT_EXIT, "cache");
    assert!(release["evidence"]
        .as_str()
        .unwrap_or("")
        .starts_with("still held 200.00 MiB at exit"));
}

const GROWING: &str = "\
import numpy as np, time
history = []
def train():
    for step in range(50):
        history.append(np.ones(4 * 1024 * 1024 // 8))  # @grows
        time.sleep(0.04)
train()
history.clear()
";

#[test]
fn a_list_that_only_grows_is_told_to_be_bounded_even_when_freed_at_the_end() {
    let run = run_script(&["--profile"], &python(), GROWING, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let release = advice_at(&all, "release", GROWING, "grows");
    let evidence = release["evidence"].as_str().unwrap_or("");
    assert!(evidence.starts_with("grew in "), "{evidence}");
    assert!(release["fix"]
        .as_str()
        .unwrap_or("")
        .starts_with("bound it"));
}

const SMALL_OBJECTS: &str = "\
def sums():
    values = [float(i) for i in range(3_000_000)]  # @objects
    return sum(values)
print(sums())
";

#[test]
fn a_list_of_floats_is_told_to_be_an_array() {
    let run = run_script(&["--profile"], &python(), SMALL_OBJECTS, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let compact = advice_at(&all, "compact", SMALL_OBJECTS, "objects");
    assert!(compact["saving_basis"]
        .as_str()
        .unwrap_or("")
        .contains("float64"));
}

const TEMPORARIES: &str = "\
import numpy as np
a = np.ones(4 * 1024 * 1024)
b = np.ones(4 * 1024 * 1024)
for step in range(10):
    c = a * 2.0 + b * 3.0 - a / 4.0  # @chain
print(float(c[0]))
";

#[test]
fn a_chained_expression_is_told_to_work_in_place() {
    let run = run_script(&["--profile"], &python(), TEMPORARIES, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let all = advice(&run);
    let chain = advice_at(&all, "temporaries", TEMPORARIES, "chain");
    let evidence = chain["evidence"].as_str().unwrap_or("");
    assert!(
        evidence.contains("sampled allocations") && evidence.contains("(samples, not objects)"),
        "sample counts are not called object counts: {evidence}"
    );
    assert!(chain["fix"].as_str().unwrap_or("").contains("out=buf"));
}

/// A 200 MiB file mapped and read: resident, file-backed, not heap.
const MAPPED: &str = "\
import mmap
with open('data.bin', 'wb') as f:
    for _ in range(200):
        f.write(b'x' * (1024 * 1024))
with open('data.bin', 'rb') as f:
    view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    total = sum(view[i] for i in range(0, len(view), 4096))
print(total)
";

#[test]
fn a_budget_nearly_reached_and_a_mapped_file_are_explained() {
    let run = run_script(&["--profile", "--budget", "150MiB"], &python(), MAPPED, &[]);
    let all = advice(&run);
    let headroom: Vec<&str> = all
        .iter()
        .filter(|a| a["rule"] == "headroom" && a["frame"].is_null())
        .filter_map(|a| a["evidence"].as_str())
        .collect();
    assert!(
        headroom
            .iter()
            .any(|e| e.contains("of the budget 150.00 MiB")),
        "{all:#?}"
    );
    assert!(
        headroom.iter().any(|e| e.contains("RssFile")),
        "the gap names the file-backed pages: {all:#?}"
    );
}

/// Reads a file line by line and keeps aggregates: nothing to advise.
// Streams its file, and keeps its own results in module variables to the end, as scripts
// do: holding them at exit is by design, not memory to release.
const CLEAN: &str = "\
import numpy as np
def histogram(n):
    return np.zeros(n)
counts = histogram(12_000_000)
table = np.ones(6_000_000)
with open('rows.csv', 'w') as f:
    for i in range(1_500_000):
        f.write(f'{i},{i * 0.5},label{i % 7}\\n')
count, total = 0, 0.0
with open('rows.csv') as f:
    for line in f:
        total += float(line.split(',')[1])
        count += 1
print(count, total)
";

#[test]
fn a_clean_streaming_workload_gets_no_advice() {
    for mode in ["--profile", "--profile=exact"] {
        let run = run_script(&[mode], &python(), CLEAN, &[]);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        let all = advice(&run);
        assert!(all.is_empty(), "{mode}: {:?}: {all:#?}", rules(&all));
        assert!(
            !run.stderr().contains("advice"),
            "no advice section: {}",
            run.stderr()
        );
    }
}
