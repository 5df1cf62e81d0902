use tidemalloc::TideMalloc;

#[global_allocator]
static A: TideMalloc = TideMalloc;

#[test]
fn vec_and_strings() {
    let mut v = Vec::new();
    for i in 0..100_000u64 {
        v.push(i.to_string());
    }
    let total: usize = v.iter().map(|s| s.len()).sum();
    assert!(total > 0);
    let big = vec![7u8; 10 << 20];
    assert_eq!(big.iter().map(|&x| x as usize).sum::<usize>(), 7 * (10 << 20));
    let s = tidemalloc::stats();
    eprintln!("{s:?}");
}

#[test]
fn threads() {
    let hs: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut v: Vec<Box<[u8]>> = Vec::new();
                for i in 0..20000usize {
                    v.push(vec![t as u8; (i * 7) % 3000 + 1].into_boxed_slice());
                    if i % 3 == 0 {
                        v.swap_remove(i % v.len());
                    }
                }
                v
            })
        })
        .collect();
    let all: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    drop(all);
}
