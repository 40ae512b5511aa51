//! What the capstone's shop sells and starts with: a catalog, stock, customers and their balances.
//!
//! The customers are the tokens' subjects: a checkout is paid by whoever the gateway verified.

use shop_domain::Seed;

/// Every article and its price in cents. An article not listed is an unknown product (`422`).
pub const CATALOG: [(&str, u64); 3] =
    [("kettle", 2_900), ("mug", 1_250), ("teapot", 3_400)];

/// The price of `sku`, if the shop sells it.
pub fn price(sku: &str) -> Option<u64> {
    CATALOG.iter().find(|(s, _)| *s == sku).map(|(_, cents)| *cents)
}

/// Ada can pay for anything, Bob for almost nothing (his card is declined), and there are only
/// three mugs (the third buyer of two finds them gone).
pub fn seed() -> Seed {
    Seed {
        stock: vec![
            ("kettle".into(), 1_000),
            ("mug".into(), 3),
            ("teapot".into(), 100),
        ],
        balances: vec![
            ("c-ada".into(), 100_000_000),
            ("c-bob".into(), 1_000),
            ("c-cyd".into(), 100_000_000),
        ],
        destinations: vec!["NL".into(), "DE".into(), "FR".into()],
    }
}
