// C++ on tidemalloc: new/delete, new[]/delete[], sized delete (-fsized-deallocation),
// aligned new (alignas(64), alignas(4096), operator new(size, std::align_val_t)), standard
// containers, std::thread. Checks that tidemalloc served the allocations (its counters moved)
// and that every aligned object is aligned. Exits 0 on success.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "tidemalloc.h"

#pragma weak tidemalloc_get_stats

static int checks;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        checks++;                                                                            \
        if (!(cond)) {                                                                       \
            std::printf("FAIL ");                                                            \
            std::printf(__VA_ARGS__);                                                        \
            std::printf("  [%s:%d: %s]\n", __FILE__, __LINE__, #cond);                       \
            std::exit(1);                                                                    \
        }                                                                                    \
        std::printf("ok   ");                                                                \
        std::printf(__VA_ARGS__);                                                            \
        std::printf("\n");                                                                   \
    } while (0)

static void *volatile sink;

static bool aligned_to(const void *p, std::size_t a) { return (reinterpret_cast<std::uintptr_t>(p) & (a - 1)) == 0; }

struct Plain {
    int a[10];
    std::string s;
};

struct alignas(64) Line {
    char bytes[64];
    long n;
};

struct alignas(4096) PageObj {
    char bytes[100];
};

static tidemalloc_stats stats() {
    tidemalloc_stats s;
    tidemalloc_get_stats(&s);
    return s;
}

static void new_delete() {
    auto before = stats();
    std::vector<Plain *> v;
    for (int i = 0; i < 10000; i++) {
        v.push_back(new Plain{{i}, std::string(50 + i % 30, 'x')});
    }
    auto during = stats();
    CHECK(during.in_use >= before.in_use + 10000 * sizeof(Plain),
          "10000 x new Plain counted by tidemalloc (in_use %zu -> %zu)", before.in_use, during.in_use);
    for (Plain *p : v) {
        if (p->s.size() < 50) CHECK(false, "object intact");
        delete p;
    }
    v.clear();
    v.shrink_to_fit();

    int *arr = new int[100000];
    std::iota(arr, arr + 100000, 0);
    sink = arr;
    CHECK(arr[99999] == 99999, "new int[100000]");
    delete[] arr;
    auto *strs = new std::string[1000];
    for (int i = 0; i < 1000; i++) strs[i] = std::string(100, char('a' + i % 26));
    CHECK(strs[999].size() == 100, "new std::string[1000] (array cookie)");
    delete[] strs;

    // Sized delete (the compiler passes the size with -fsized-deallocation).
    for (std::size_t n : {1ul, 16ul, 100ul, 4096ul, 70000ul, 300000ul, 5000000ul}) {
        void *p = ::operator new(n);
        std::memset(p, 1, n);
        ::operator delete(p, n);
    }
    CHECK(true, "operator new(n) / operator delete(p, n) for sizes 1 .. 5 MB");
    auto *pl = new Plain();
    delete pl;  // sized delete of a complete type
    CHECK(true, "delete of a complete type (sized)");

    // nothrow new
    auto *nt = new (std::nothrow) char[1000];
    CHECK(nt != nullptr, "new (std::nothrow) char[1000]");
    delete[] nt;
    bool threw = false;
    try {
        volatile std::size_t huge = SIZE_MAX / 2;
        sink = ::operator new(huge);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw, "operator new(SIZE_MAX/2) throws std::bad_alloc");
    char *ntn = new (std::nothrow) char[SIZE_MAX / 4];
    CHECK(ntn == nullptr, "new (std::nothrow) char[SIZE_MAX/4] returns nullptr");
}

static void aligned_new() {
    std::vector<Line *> lines;
    for (int i = 0; i < 1000; i++) {
        lines.push_back(new Line());
        if (!aligned_to(lines.back(), 64)) CHECK(false, "new Line (alignas 64) #%d is aligned", i);
        lines.back()->n = i;
    }
    CHECK(true, "1000 x new Line: alignas(64) respected");
    for (Line *l : lines) delete l;
    auto *la = new Line[333];
    CHECK(aligned_to(la, 64), "new Line[333] aligned to 64");
    delete[] la;

    std::vector<PageObj *> pages;
    for (int i = 0; i < 100; i++) {
        pages.push_back(new PageObj());
        if (!aligned_to(pages.back(), 4096)) CHECK(false, "new PageObj (alignas 4096) #%d is aligned", i);
        std::memset(pages.back()->bytes, i, sizeof pages.back()->bytes);
    }
    CHECK(true, "100 x new PageObj: alignas(4096) respected");
    for (PageObj *p : pages) delete p;
    auto *pa = new PageObj[10];
    CHECK(aligned_to(pa, 4096), "new PageObj[10] aligned to 4096");
    delete[] pa;

    for (std::size_t a = 16; a <= (1u << 20); a *= 2) {
        for (std::size_t n : {a, 3 * a, std::size_t(100), std::size_t(200000)}) {
            void *p = ::operator new(n, std::align_val_t(a));
            if (!aligned_to(p, a)) CHECK(false, "operator new(%zu, align %zu) = %p", n, a, p);
            std::memset(p, 7, n);
            if (n % 2)
                ::operator delete(p, std::align_val_t(a));
            else
                ::operator delete(p, n, std::align_val_t(a));
        }
    }
    CHECK(true, "operator new(size, align_val_t) for alignments 16 .. 1 MiB, sized and unsized delete");
    void *nt = ::operator new(1000, std::align_val_t(256), std::nothrow);
    CHECK(nt && aligned_to(nt, 256), "operator new(1000, align 256, nothrow)");
    ::operator delete(nt, std::align_val_t(256));
    auto up = std::make_unique<Line>();
    CHECK(aligned_to(up.get(), 64), "std::make_unique<Line> aligned");
    auto sp = std::make_shared<PageObj>();
    CHECK(aligned_to(sp.get(), 4096), "std::make_shared<PageObj> aligned");
}

static std::uint64_t containers(int seed) {
    std::uint64_t sum = 0;
    std::vector<std::string> words;
    for (int i = 0; i < 50000; i++) words.push_back("w" + std::to_string((i * 7919 + seed) % 50021) + std::string(i % 13, 'z'));
    std::sort(words.begin(), words.end());
    std::map<std::string, std::vector<int>> m;
    std::unordered_map<std::string, std::size_t> um;
    for (std::size_t i = 0; i < words.size(); i++) {
        m[words[i].substr(0, 4)].push_back(int(i));
        um[words[i]] += i;
    }
    for (auto &kv : m) sum += kv.second.size() * kv.first.size();
    for (auto &kv : um) sum += kv.second % 1000;
    std::string big;
    for (int i = 0; i < 20000; i++) big += words[std::size_t(i)];
    sum += big.size();
    std::vector<std::vector<double>> grid(300, std::vector<double>(300, 1.5));
    for (auto &row : grid) row.resize(row.size() * 2, 2.5);
    for (auto &row : grid) sum += std::uint64_t(std::accumulate(row.begin(), row.end(), 0.0));
    m.clear();
    um.clear();
    return sum;
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    CHECK(tidemalloc_get_stats != nullptr, "tidemalloc is loaded");
    auto s0 = stats();
    new_delete();
    aligned_new();
    std::uint64_t a = containers(1);
    CHECK(a == containers(1), "containers workload is deterministic (%llu)", (unsigned long long)a);

    std::atomic<std::uint64_t> total{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++)
        ts.emplace_back([t, &total] {
            total += containers(t);
            std::vector<std::unique_ptr<Line>> v;
            for (int i = 0; i < 5000; i++) v.push_back(std::make_unique<Line>());
            for (auto &l : v)
                if (!aligned_to(l.get(), 64)) std::abort();
        });
    // Objects made on one thread, destroyed on another.
    auto *shared_vec = new std::vector<std::string>(10000, std::string(40, 'q'));
    std::thread killer([shared_vec] { delete shared_vec; });
    killer.join();
    for (auto &t : ts) t.join();
    CHECK(total.load() > 0, "4 threads ran the containers workload");
    auto s1 = stats();
    CHECK(s1.peak_in_use > s0.in_use + 10000 * sizeof(Plain), "tidemalloc served the program (peak %zu)", s1.peak_in_use);
    CHECK(s1.brk_calls + s1.mmap_calls > s0.brk_calls + s0.mmap_calls, "tidemalloc asked the kernel for memory");
    CHECK(s1.in_use < s1.peak_in_use, "in use %zu back below the peak", s1.in_use);
    std::printf("newdelete: all %d checks passed\n", checks);
    return 0;
}
