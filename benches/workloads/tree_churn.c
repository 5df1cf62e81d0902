/* tree_churn: single-thread small-object churn.
 * Repeatedly builds binary search trees and linked lists of nodes of 16-512 B
 * (random payload size), does lookups and deletions, then tears them down
 * (trees in post-order, lists in list order).
 * Usage: tree_churn SCALE THREADS   (THREADS ignored) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "tree_churn"
#include "workload.h"

static Rng rng;

typedef struct TNode {
    struct TNode *l, *r;
    uint64_t key;
    uint32_t len; /* payload length */
    uint8_t pay[];
} TNode;

typedef struct LNode {
    struct LNode *next;
    uint32_t key;
    uint32_t len;
    uint8_t pay[];
} LNode;

static void fill(uint8_t *p, uint32_t len, uint64_t key) {
    if (len == 0) return;
    memset(p, (int)(key & 0xff), len);
    p[0] = (uint8_t)(key >> 8);
    p[len - 1] = (uint8_t)(key >> 16);
}
static uint64_t check(const uint8_t *p, uint32_t len, uint64_t key) {
    if (len == 0) return 0;
    if (p[len - 1] != (uint8_t)(key >> 16)) fail("payload end");
    if (len > 1 && p[0] != (uint8_t)(key >> 8)) fail("payload start");
    if (len > 2 && p[len / 2] != (uint8_t)(key & 0xff)) fail("payload middle");
    return (uint64_t)p[0] + p[len - 1] + len;
}

static TNode *tnode_new(uint64_t key) {
    size_t total = 32 + below(&rng, 512 - 32 + 1); /* 32..512 */
    uint32_t len = (uint32_t)(total - offsetof(TNode, pay));
    TNode *n = malloc(total);
    if (!n) fail("malloc");
    n->l = n->r = NULL;
    n->key = key;
    n->len = len;
    fill(n->pay, len, key);
    return n;
}

static LNode *lnode_new(uint32_t key) {
    size_t total = 16 + below(&rng, 512 - 16 + 1); /* 16..512 */
    uint32_t len = (uint32_t)(total - offsetof(LNode, pay));
    LNode *n = malloc(total);
    if (!n) fail("malloc");
    n->next = NULL;
    n->key = key;
    n->len = len;
    fill(n->pay, len, key);
    return n;
}

/* insert; returns 1 if inserted, 0 if key already present */
static int tree_insert(TNode **root, uint64_t key) {
    TNode **p = root;
    while (*p) {
        if (key == (*p)->key) return 0;
        p = key < (*p)->key ? &(*p)->l : &(*p)->r;
    }
    *p = tnode_new(key);
    return 1;
}
static TNode *tree_find(TNode *t, uint64_t key) {
    while (t && t->key != key) t = key < t->key ? t->l : t->r;
    return t;
}
static int tree_delete(TNode **root, uint64_t key, uint64_t *sum) {
    TNode **p = root;
    while (*p && (*p)->key != key) p = key < (*p)->key ? &(*p)->l : &(*p)->r;
    if (!*p) return 0;
    TNode *n = *p;
    if (!n->l) *p = n->r;
    else if (!n->r) *p = n->l;
    else {
        TNode **s = &n->r; /* successor */
        while ((*s)->l) s = &(*s)->l;
        TNode *succ = *s;
        *s = succ->r;
        succ->l = n->l;
        succ->r = n->r;
        *p = succ;
    }
    *sum += check(n->pay, n->len, n->key);
    free(n);
    return 1;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    long rounds = (long)(500 * scale + 0.5);
    if (rounds < 1) rounds = 1;
    rng.s = 0x7ee5eed1234567ULL;

    const size_t maxn = 12000;
    uint64_t *keys = malloc(maxn * sizeof *keys);
    TNode **stack = malloc(maxn * sizeof *stack);
    if (!keys || !stack) fail("malloc");
    uint64_t sum = 0;

    for (long r = 0; r < rounds; r++) {
        size_t n = 2000 + below(&rng, maxn - 2000);
        TNode *root = NULL;
        LNode *head = NULL, *tail = NULL;
        size_t tcount = 0, lcount = 0;
        uint32_t lnext = 0, lfirst = 0; /* list keys are consecutive */
        /* build the tree and, interleaved, a queue-like list */
        for (size_t i = 0; i < n; i++) {
            uint64_t key = mix_finish(rnd(&rng));
            if (tree_insert(&root, key)) keys[tcount++] = key;
            for (int j = 0; j < 3; j++) {
                LNode *ln = lnode_new(lnext++);
                if (tail) tail->next = ln; else head = ln;
                tail = ln;
                lcount++;
            }
            while (head && below(&rng, 5) < 3) { /* pop from the front */
                LNode *f = head;
                if (f->key != lfirst) fail("list order");
                head = f->next;
                if (!head) tail = NULL;
                sum += check(f->pay, f->len, f->key);
                free(f);
                lfirst++;
                lcount--;
            }
        }
        /* lookups: hits and misses, with some deletions and re-insertions */
        for (size_t i = 0; i < n; i++) {
            uint64_t k = below(&rng, 3);
            if (k == 0) {
                size_t idx = below(&rng, tcount);
                TNode *f = tree_find(root, keys[idx]);
                if (keys[idx] != 0 && !f) fail("lookup missed a present key");
                if (f) sum += check(f->pay, f->len, f->key);
            } else if (k == 1) {
                if (tree_find(root, mix_finish(rnd(&rng)) | 1) != NULL) sum += 1;
            } else {
                size_t idx = below(&rng, tcount);
                if (keys[idx] != 0) {
                    if (!tree_delete(&root, keys[idx], &sum)) fail("delete missed");
                    keys[idx] = 0; /* 0 marks deleted (mix_finish() of random is ~never 0) */
                    uint64_t nk = mix_finish(rnd(&rng)) | 2;
                    if (tree_insert(&root, nk)) keys[idx] = nk;
                }
            }
        }
        /* tear down the tree in post-order */
        size_t sp = 0, freed = 0;
        TNode *last = NULL, *cur = root;
        while (cur || sp) {
            if (cur) { stack[sp++] = cur; cur = cur->l; continue; }
            TNode *top = stack[sp - 1];
            if (top->r && last != top->r) { cur = top->r; continue; }
            sp--;
            sum += check(top->pay, top->len, top->key) ^ (top->key & 0xffff);
            last = top;
            free(top);
            freed++;
        }
        size_t live = 0;
        for (size_t i = 0; i < tcount; i++) live += keys[i] != 0;
        if (freed != live) fail("tree node count");
        /* tear down the list in list order */
        size_t lf = 0;
        for (LNode *p = head; p;) {
            LNode *nx = p->next;
            if (p->key != lfirst + lf) fail("list key");
            sum += check(p->pay, p->len, p->key);
            free(p);
            lf++;
            p = nx;
        }
        if (lf != lcount) fail("list count");
        sum = sum * 31 + freed + lf;
    }
    free(keys);
    free(stack);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
