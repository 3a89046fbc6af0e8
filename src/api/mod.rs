//! The gRPC services: one module per service, one generic path for the three
//! record kinds, and one error mapping.

pub mod partners;
pub mod records;
pub mod status;

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::domain::Result;
use crate::domain::paging::PageTokens;
use crate::store::DynStore;

/// What every service shares.
pub struct Hub {
    pub store: DynStore,
    pub auth: Authenticator,
    pub tokens: PageTokens,
}

impl Hub {
    pub async fn new(store: DynStore, trust_domain: &str) -> Result<Arc<Self>> {
        let info = store.hub_info().await?;
        Ok(Arc::new(Self {
            auth: Authenticator::new(store.clone(), trust_domain),
            tokens: PageTokens::new(&info.token_key),
            store,
        }))
    }
}
