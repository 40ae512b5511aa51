//! The happy path allocates nothing: a closed breaker's `call` and tower layer make no heap
//! allocation per call (counted by a counting global allocator in this test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config};
use tower::{Layer, Service, ServiceExt, service_fn};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test function, so no other test thread allocates while this one counts.
#[test]
fn closed_calls_make_no_heap_allocation() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let breaker = CircuitBreaker::new(Config::builder().time_window(10, std::time::Duration::from_secs(1)).build().unwrap());
    let mut layered = CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(|x: u64| async move { Ok::<_, ()>(x) }));
    rt.block_on(async {
        // Warm up: lazily initialised runtime and timer state may allocate once.
        for _ in 0..100 {
            breaker.call(async { Ok::<_, ()>(1) }).await.unwrap();
            layered.ready().await.unwrap().call(1).await.unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for i in 0..1_000 {
            let outcome = if i % 10 == 0 { Err(()) } else { Ok(1) }; // some failures, below threshold
            let _ = breaker.call(async { outcome }).await;
            layered.ready().await.unwrap().call(1).await.unwrap();
        }
        assert_eq!(ALLOCATIONS.load(Ordering::SeqCst) - before, 0, "the closed path must not allocate");
    });
    assert_eq!(breaker.state(), circuit_breaker::State::Closed);
}
