//! Real programs from Debian packages on `libtidemalloc.so`: each workload runs three times,
//! in fresh directories: as is, with `LD_PRELOAD` of the release library (and
//! `TIDEMALLOC_SHOW_STATS=1`, which prints tidemalloc's counters on stderr at the exit of
//! every process), and preloaded with the heap profiler on (`TIDEMALLOC_PROF=1` at a rate of
//! 4 KiB, so every process takes many samples). All runs must exit 0 with identical stdout,
//! the preloaded runs' stderr must show that tidemalloc served them, and the profiled run
//! must leave a profile per process that decodes. Stderr is not compared: the counters (and
//! timings some tools print) differ.
//!
//! Workloads: python3 (dicts, lists, strings, json), git (2,000 files: add, commit, gc, log),
//! gcc and g++ (a multi-file C and C++ program, linked and run), perl (hashes, regexes,
//! strings), sqlite3 (200k rows with indexes, queries), bash (strings, arrays, associative
//! arrays, subshells).
//!
//! A missing program prints `SKIP: ... (apt-get install X)`, except under CI (env var `CI`
//! set), where the test fails.

mod common;
#[path = "../../tests/pprof_decode/mod.rs"]
mod pprof_decode;
use tide as tm;

use common::{Run, clean_env, lib, require, run, scratch_dir};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A program from its Debian package (/usr/bin) rather than another copy earlier on PATH.
fn tool(name: &str) -> String {
    let p = Path::new("/usr/bin").join(name);
    if p.exists() { p.to_string_lossy().into_owned() } else { name.to_string() }
}

/// One step of a workload: a program and its arguments, run in the work directory.
type Step = Vec<String>;

fn step(args: &[&str]) -> Step {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !v[0].starts_with("./") {
        v[0] = tool(&v[0]);
    }
    v
}

/// How a workload runs: without tidemalloc, preloaded, or preloaded with the profiler
/// writing its profiles under the given prefix.
#[derive(Clone, Copy, PartialEq)]
enum Mode<'a> {
    Plain,
    Preload,
    Profiled(&'a Path),
}

/// Runs every step in `dir`; returns the runs (stopping at the first failure).
fn run_steps(dir: &Path, steps: &[Step], mode: Mode) -> Vec<(String, Run)> {
    let mut runs = Vec::new();
    for s in steps {
        let mut cmd = Command::new(&s[0]);
        cmd.args(&s[1..])
            .current_dir(dir)
            .env("HOME", dir)
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Tide Tester")
            .env("GIT_AUTHOR_EMAIL", "tide@example.org")
            .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
            .env("GIT_COMMITTER_NAME", "Tide Tester")
            .env("GIT_COMMITTER_EMAIL", "tide@example.org")
            .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z");
        clean_env(&mut cmd);
        if mode != Mode::Plain {
            cmd.env("LD_PRELOAD", &lib().so).env("TIDEMALLOC_SHOW_STATS", "1");
        }
        if let Mode::Profiled(prefix) = mode {
            cmd.env("TIDEMALLOC_PROF", "1").env("TIDEMALLOC_PROF_RATE", "4096").env("TIDEMALLOC_PROF_PREFIX", prefix);
        }
        let r = run(&mut cmd, Duration::from_secs(300));
        let label = s.join(" ");
        let ok = r.success();
        runs.push((label, r));
        if !ok {
            break;
        }
    }
    runs
}

/// Runs the workload without and with tidemalloc, in two fresh directories prepared by
/// `setup`, and compares. `expect` must appear in the output (the workload really ran).
fn compare(test: &str, setup: impl Fn(&Path), steps: &[Step], expect: &str) {
    let base = scratch_dir(&format!("real-{test}"));
    let mut outputs = Vec::new();
    let profiles = base.join("profiles");
    std::fs::create_dir_all(&profiles).expect("create the profile dir");
    let prefix = profiles.join("p");
    for mode in [Mode::Plain, Mode::Preload, Mode::Profiled(&prefix)] {
        let preload = mode != Mode::Plain;
        let (name, which) = match mode {
            Mode::Plain => ("plain", "without tidemalloc"),
            Mode::Preload => ("tidemalloc", "with LD_PRELOAD=libtidemalloc.so"),
            Mode::Profiled(_) => ("profiled", "with LD_PRELOAD=libtidemalloc.so TIDEMALLOC_PROF=1"),
        };
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).expect("create work dir");
        setup(&dir);
        let started = std::time::Instant::now();
        let runs = run_steps(&dir, steps, mode);
        eprintln!("{test} {which}: {:.1?}", started.elapsed());
        let mut stdout = String::new();
        for (label, r) in &runs {
            assert!(r.success(), "{test} {which}: `{label}` failed:\n{}", r.tail(40));
            if preload {
                assert!(
                    r.stderr.contains("tidemalloc stats:"),
                    "{test}: `{label}` did not run on tidemalloc (no stats on stderr):\n{}",
                    r.tail(20)
                );
            }
            let _ = writeln!(stdout, "== {label}");
            stdout.push_str(&r.stdout);
        }
        assert_eq!(runs.len(), steps.len());
        outputs.push(stdout.replace(&*dir.to_string_lossy(), "<dir>"));
    }
    assert!(outputs[0].contains(expect), "{test}: no {expect:?} in the output:\n{}", outputs[0]);
    for other in &outputs[1..] {
        same_output(test, &outputs[0], other);
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&profiles).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() >= steps.len(), "{test}: {} profiles for {} steps", files.len(), steps.len());
    for f in &files {
        let p = pprof_decode::decode_file(f);
        assert!(p.sample_type.len() == 6 && p.period == 4096, "{test}: {}", f.display());
    }
    let _ = std::fs::remove_dir_all(&base);
}

fn same_output(test: &str, want: &str, got: &str) {
    if want != got {
        let a: Vec<&str> = want.lines().collect();
        let b: Vec<&str> = got.lines().collect();
        let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        panic!(
            "{test}: stdout differs with tidemalloc at line {} ({} vs {} lines):\nwithout: {:?}\nwith:    {:?}",
            i + 1,
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let p: PathBuf = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

// ---- python3 ----

const PY: &str = r#"
import json, hashlib

d = {}
for i in range(300000):
    k = "key-%07d-%s" % ((i * 7919) % 300000, "x" * (i % 17))
    d.setdefault(k, []).append(i)
keys = sorted(d)
h = hashlib.sha256()
for k in keys:
    h.update(k.encode())
    h.update(str(sum(d[k])).encode())
print("dict", len(d), h.hexdigest())

sub = {k: d[k] for k in keys[:60000]}
blob = json.dumps(sub, sort_keys=True)
back = json.loads(blob)
assert back == sub
print("json", len(blob), hashlib.sha256(blob.encode()).hexdigest()[:16])

words = [str(i) * (i % 5 + 1) for i in range(200000)]
joined = " ".join(words)
parts = joined.split(" ")
acc = ""
for w in parts[:20000]:
    acc += w[::-1]
print("strings", len(joined), len(parts), len(acc), acc[:30])

rows = [(i % 1013, -i, "r%d" % (i * 31 % 997)) for i in range(150000)]
rows.sort()
nested = [[j for j in range(i % 50)] for i in range(20000)]
print("lists", rows[0], rows[-1], sum(len(x) for x in nested))

objs = [{"id": i, "tags": ["t%d" % (i % 7), "u%d" % (i % 11)], "s": "v" * (i % 40)} for i in range(100000)]
by_tag = {}
for o in objs:
    for t in o["tags"]:
        by_tag.setdefault(t, []).append(o["id"])
print("objects", sorted((t, len(v)) for t, v in by_tag.items())[:5])
del d, sub, back, objs
print("done")
"#;

#[test]
fn python3_dicts_and_strings() {
    if !require("python3_dicts_and_strings", &tool("python3"), "python3") {
        return;
    }
    compare("python3", |d| write(d, "work.py", PY), &[step(&["python3", "work.py"])], "done");
}

// ---- git ----

fn git_files(dir: &Path) {
    for i in 0..2000 {
        let mut text = String::new();
        for line in 0..(5 + i % 40) {
            let _ = writeln!(text, "file {i} line {line}: {}", "lorem ipsum ".repeat((i + line) % 9));
        }
        write(dir, &format!("src/d{:02}/f{i:04}.txt", i % 37), &text);
    }
}

#[test]
fn git_add_commit_gc_log() {
    if !require("git_add_commit_gc_log", &tool("git"), "git") {
        return;
    }
    let steps = [
        step(&["git", "init", "-q", "-b", "main", "repo"]),
        step(&["git", "-C", "repo", "config", "user.name", "Tide Tester"]),
        step(&["git", "-C", "repo", "config", "gc.auto", "0"]),
        step(&["git", "-C", "repo", "add", "."]),
        step(&["git", "-C", "repo", "commit", "-q", "-m", "2000 files"]),
        step(&["git", "-C", "repo", "rm", "-q", "-r", "src/d03"]),
        step(&["git", "-C", "repo", "mv", "src/d04", "src/moved"]),
        step(&["git", "-C", "repo", "commit", "-q", "-m", "remove and move"]),
        step(&["git", "-C", "repo", "gc", "-q", "--aggressive"]),
        step(&["git", "-C", "repo", "fsck", "--full", "--no-progress"]),
        step(&["git", "-C", "repo", "log", "--stat"]),
        step(&["git", "-C", "repo", "rev-parse", "HEAD", "HEAD^{tree}"]),
        step(&["git", "-C", "repo", "ls-tree", "-r", "--name-only", "HEAD"]),
        step(&["git", "-C", "repo", "diff", "--stat", "HEAD~1", "HEAD"]),
    ];
    compare("git", |d| git_files(&d.join("repo")), &steps, "2000 files");
}

// ---- gcc and g++ ----

const A_C: &str = r#"
#include <stdlib.h>
#include <string.h>
long fib_memo(int n) {
    long *m = calloc((size_t)n + 2, sizeof *m);
    m[1] = 1;
    for (int i = 2; i <= n; i++) m[i] = m[i - 1] + m[i - 2];
    long r = m[n];
    free(m);
    return r;
}
"#;

const B_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
unsigned long strings_work(int n) {
    char **v = malloc(sizeof *v * (size_t)n);
    for (int i = 0; i < n; i++) {
        v[i] = malloc(32);
        snprintf(v[i], 32, "s%07d", (i * 7919) % n);
        v[i] = realloc(v[i], strlen(v[i]) + 1 + (size_t)(i % 100));
    }
    qsort(v, (size_t)n, sizeof *v, cmp);
    unsigned long h = 5381;
    for (int i = 0; i < n; i++) {
        for (char *c = v[i]; *c; c++) h = h * 33 + (unsigned char)*c;
        free(v[i]);
    }
    free(v);
    return h;
}
"#;

const C_C: &str = r#"
#include <stdlib.h>
struct node { struct node *next; long key, val; };
long table_work(int n) {
    size_t cap = 1024;
    struct node **t = calloc(cap, sizeof *t);
    for (long i = 0; i < n; i++) {
        struct node *e = malloc(sizeof *e);
        e->key = (i * 2654435761L) % 100003;
        e->val = i;
        e->next = t[e->key % cap];
        t[e->key % cap] = e;
    }
    long s = 0;
    for (size_t b = 0; b < cap; b++) {
        struct node *e = t[b];
        while (e) {
            struct node *nx = e->next;
            s += e->key ^ e->val;
            free(e);
            e = nx;
        }
    }
    free(t);
    return s;
}
"#;

const MAIN_C: &str = r#"
#include <stdio.h>
long fib_memo(int n);
unsigned long strings_work(int n);
long table_work(int n);
long cpp_words(int n);
long cpp_matrix(int n);
int main(void) {
    printf("fib %ld\n", fib_memo(80));
    printf("strings %lu\n", strings_work(100000));
    printf("table %ld\n", table_work(200000));
    printf("words %ld\n", cpp_words(50000));
    printf("matrix %ld\n", cpp_matrix(60));
    printf("program done\n");
    return 0;
}
"#;

const D_CPP: &str = r#"
#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>
template <typename K, typename V> static V total(const std::map<K, V> &m) {
    V s{};
    for (const auto &kv : m) s += kv.second;
    return s;
}
extern "C" long cpp_words(int n) {
    std::vector<std::string> words;
    for (int i = 0; i < n; i++) words.push_back("w" + std::to_string((i * 7919) % 5003) + std::string(i % 9, 'q'));
    std::sort(words.begin(), words.end());
    std::map<std::string, long> counts;
    std::unordered_map<std::string, std::vector<int>> where;
    for (int i = 0; i < n; i++) {
        counts[words[i].substr(0, 3)] += i % 13;
        where[words[i]].push_back(i);
    }
    long s = total(counts);
    for (const auto &kv : where) s += (long)kv.second.size() * (long)kv.first.size();
    return s;
}
"#;

const E_CPP: &str = r#"
#include <memory>
#include <numeric>
#include <vector>
template <typename T> class Matrix {
  public:
    explicit Matrix(int n) : n_(n), d_(std::make_unique<T[]>((size_t)n * n)) {}
    T &at(int i, int j) { return d_[(size_t)i * n_ + j]; }
    Matrix mul(Matrix &o) {
        Matrix r(n_);
        for (int i = 0; i < n_; i++)
            for (int j = 0; j < n_; j++) {
                T s{};
                for (int k = 0; k < n_; k++) s += at(i, k) * o.at(k, j);
                r.at(i, j) = s;
            }
        return r;
    }
    int n_;
    std::unique_ptr<T[]> d_;
};
extern "C" long cpp_matrix(int n) {
    Matrix<long> a(n), b(n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            a.at(i, j) = (i * 3 + j) % 17;
            b.at(i, j) = (i + j * 5) % 13;
        }
    Matrix<long> c = a.mul(b);
    std::vector<long> diag;
    for (int i = 0; i < n; i++) diag.push_back(c.at(i, i));
    return std::accumulate(diag.begin(), diag.end(), 0L);
}
"#;

#[test]
fn gcc_and_gxx_build_a_program() {
    if !require("gcc_and_gxx_build_a_program", &tool("gcc"), "gcc")
        || !require("gcc_and_gxx_build_a_program", &tool("g++"), "g++")
    {
        return;
    }
    let setup = |d: &Path| {
        for (name, text) in
            [("a.c", A_C), ("b.c", B_C), ("c.c", C_C), ("main.c", MAIN_C), ("d.cpp", D_CPP), ("e.cpp", E_CPP)]
        {
            write(d, name, text);
        }
    };
    let steps = [
        step(&["gcc", "-O2", "-g", "-Wall", "-c", "a.c", "b.c", "c.c", "main.c"]),
        step(&["g++", "-O2", "-g", "-Wall", "-std=c++17", "-c", "d.cpp", "e.cpp"]),
        step(&["g++", "-o", "prog", "a.o", "b.o", "c.o", "main.o", "d.o", "e.o"]),
        step(&["./prog"]),
    ];
    compare("gcc", setup, &steps, "program done");
}

// ---- perl ----

const PERL: &str = r#"
use strict;
use warnings;
my %h;
my $text = "";
for my $i (0 .. 199999) {
    my $k = sprintf("k%06d_%s", ($i * 7919) % 200000, "ab" x ($i % 7));
    push @{ $h{$k} }, $i;
    $text .= "$k=$i;" if $i % 3 == 0;
}
my @keys = sort keys %h;
my $n = 0;
while ($text =~ /k(\d+)_((?:ab)*)=(\d+);/g) { $n += length($2) + ($3 % 7); }
my %count;
$count{ substr($_, 0, 3) }++ for @keys;
print scalar(@keys), " ", length($text), " $n\n";
print join(",", map { "$_:$count{$_}" } sort keys %count), "\n";
my $s = join("|", @keys[0 .. 9999]);
(my $t = $s) =~ s/_(?:ab)+/-/g;
my @f = split /\|/, $t;
print length($s), " ", length($t), " ", scalar(@f), " ", unpack("%32C*", $t), "\n";
my %inv = map { ($h{$_}[0] => $_) } @keys;
my $sum = 0;
$sum += length($inv{$_}) for grep { $_ % 5 == 0 } keys %inv;
print "inv ", scalar(keys %inv), " $sum\n";
my @sorted = sort { length($a) <=> length($b) or $b cmp $a } @keys[0 .. 49999];
print "$sorted[0] $sorted[-1]\n";
print "perl done\n";
"#;

#[test]
fn perl_hashes_and_regexes() {
    if !require("perl_hashes_and_regexes", &tool("perl"), "perl") {
        return;
    }
    compare("perl", |d| write(d, "work.pl", PERL), &[step(&["perl", "work.pl"])], "perl done");
}

// ---- sqlite3 ----

const SQL: &str = r#"
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER, grp INTEGER, note TEXT);
CREATE INDEX t_k ON t(k);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, printf('%08d', x * 7919 % 200000), (x * 31) % 1000, x % 97,
                     substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26, 1 + x % 20) FROM c;
COMMIT;
SELECT count(*), sum(v), min(k), max(k), sum(length(note)) FROM t;
SELECT grp, count(*), sum(v), max(note) FROM t GROUP BY grp ORDER BY grp LIMIT 10;
SELECT k, v, note FROM t ORDER BY k DESC, id LIMIT 5;
SELECT id, v FROM t WHERE k = '00012345';
SELECT count(*), sum(id) FROM t WHERE k BETWEEN '00100000' AND '00100999';
CREATE INDEX t_v ON t(v, grp);
SELECT v, count(*) FROM t WHERE v < 5 GROUP BY v ORDER BY v;
UPDATE t SET v = v + 1 WHERE grp = 3;
SELECT sum(v) FROM t;
DELETE FROM t WHERE id % 10 = 0;
SELECT count(*) FROM t;
SELECT note, count(*) AS n FROM t GROUP BY note ORDER BY n DESC, note LIMIT 5;
SELECT group_concat(k, ',') FROM (SELECT k FROM t ORDER BY k LIMIT 20);
SELECT a.grp, count(*) FROM t AS a JOIN t AS b ON a.id = b.id + 1 WHERE a.grp < 5 GROUP BY a.grp ORDER BY a.grp;
VACUUM;
PRAGMA integrity_check;
SELECT 'sqlite done';
"#;

#[test]
fn sqlite3_table_with_indexes() {
    if !require("sqlite3_table_with_indexes", &tool("sqlite3"), "sqlite3") {
        return;
    }
    compare(
        "sqlite3",
        |d| write(d, "work.sql", SQL),
        &[step(&["sqlite3", "db.sqlite", ".read work.sql"])],
        "sqlite done",
    );
}

// ---- bash ----

const BASH: &str = r#"
set -u
s=""
declare -a arr=()
declare -A map=()
for ((i = 0; i < 20000; i++)); do
    s+="x$i"
    arr+=("item$((i * 7 % 1000))")
    map["k$((i % 3000))"]+="$i,"
done
echo "sizes ${#s} ${#arr[@]} ${#map[@]}"
total=0
for k in "${!map[@]}"; do
    v=${map[$k]}
    total=$((total + ${#v}))
done
echo "total $total"
echo "first keys $(printf '%s\n' "${!map[@]}" | sort | head -5 | tr '\n' ' ')"
n=0
for ((i = 0; i < 300; i++)); do
    r=$(echo "$i" | tr 0-9 a-j)
    q=$(printf '%s-%s' "$r" "$i")
    n=$((n + ${#r} + ${#q}))
done
echo "subshells $n"
words=()
for w in ${s//x/ }; do words+=("$w"); done
echo "words ${#words[@]} ${words[123]} ${words[-1]}"
up=${s^^}
echo "upper ${#up} ${up:0:20}"
unset 'arr[5]' 'arr[7]'
arr=("${arr[@]}")
joined=$(IFS=,; echo "${arr[*]:0:10}")
echo "joined $joined"
str=$(printf 'line %d\n' {1..2000})
lines=0
while IFS= read -r line; do lines=$((lines + ${#line})); done <<< "$str"
echo "read $lines"
echo "bash done"
"#;

#[test]
fn bash_strings_and_arrays() {
    if !require("bash_strings_and_arrays", &tool("bash"), "bash") {
        return;
    }
    compare("bash", |d| write(d, "work.sh", BASH), &[step(&["bash", "work.sh"])], "bash done");
}
