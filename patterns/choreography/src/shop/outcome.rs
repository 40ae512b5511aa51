//! What every service knows about an order, read from their schemas: the view of a test or an
//! auditor (no service reads another's tables).

use super::*;

/// Every service's view of one order, and the events each emitted about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The order as the orders service has it; `None` if it never took it.
    pub order: Option<Order>,
    /// Inventory's hold for the order, if it heard of it.
    pub hold: Option<Hold>,
    /// All of inventory's stock, by SKU.
    pub stock: BTreeMap<String, u32>,
    /// Payments' record of the order, if it heard of it.
    pub payment: Option<Payment>,
    /// All of payments' balances, by customer.
    pub balances: BTreeMap<String, u64>,
    /// Shipping's record of the order, if it heard of it.
    pub shipment: Option<Shipment>,
    /// How many events of each type the four outboxes hold for this order:
    /// one per effect, since every effect emits exactly one event.
    pub emitted: BTreeMap<String, u64>,
}

impl Outcome {
    /// Whether every service's record of the order is final: the order is
    /// confirmed or cancelled, and every compensation it needed is done.
    pub fn settled(&self) -> bool {
        let Some(order) = &self.order else { return false };
        let confirmed = matches!(order.status, OrderStatus::Confirmed { .. });
        let hold = match &self.hold {
            Some(Hold::Reserved { .. }) => confirmed,
            Some(_) => true,
            None => false,
        };
        let payment = self.payment.as_ref().is_some_and(|p| match p.status {
            PaymentStatus::Pending => false,
            PaymentStatus::Authorized { .. } => confirmed,
            _ => true,
        });
        let shipment = self
            .shipment
            .as_ref()
            .is_some_and(|s| s.status != ShipmentStatus::Pending);
        order.status.is_final() && hold && payment && shipment
    }

    /// One line: each service's status.
    pub fn summary(&self) -> String {
        let order = self.order.as_ref().map(|o| match &o.status {
            OrderStatus::Cancelled { reason } => format!("cancelled ({reason})"),
            status => status.name().to_owned(),
        });
        let hold = self.hold.as_ref().map(Hold::name);
        let payment = self.payment.as_ref().map(|p| p.status.name());
        let shipment = self.shipment.as_ref().map(|s| s.status.name());
        let none = || "none".to_owned();
        format!(
            "order {}, stock {}, payment {}, shipment {}",
            order.unwrap_or_else(none),
            hold.map_or_else(none, str::to_owned),
            payment.map_or_else(none, str::to_owned),
            shipment.map_or_else(none, str::to_owned),
        )
    }
}

pub(super) async fn read_record<T: serde::de::DeserializeOwned>(
    client: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    order_id: &str,
) -> Result<Option<T>, Error> {
    let sql = format!("SELECT record FROM {schema}.{table} WHERE order_id = $1");
    match client.query_opt(&sql, &[&order_id]).await? {
        Some(row) => Ok(Some(serde_json::from_str(row.get(0))?)),
        None => Ok(None),
    }
}
