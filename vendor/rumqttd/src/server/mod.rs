// use tokio::io::{AsyncRead, AsyncWrite};

mod broker;
mod direct;
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
mod tls;

pub use broker::{Broker, Connector, LinkType, Server, WillHandlers};
pub use direct::{DirectLink, OpenError};

// pub trait IO: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
// impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> IO for T {}
