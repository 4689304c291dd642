//! The keys of the configuration language and where each may appear.

/// Every key the grammar knows, in the order of SPEC section 2's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Listen,
    TlsCertificate,
    TlsKey,
    TlsProtocols,
    TlsClientCa,
    TlsClientAuth,
    BackendCa,
    BackendTlsVerify,
    Match,
    Name,
    ServerList,
    LoadBalancer,
    AttemptsCount,
    OfflineTimeOut,
    ConnectTimeout,
    BackendTimeout,
    IdleTimeout,
    HeadTimeout,
    HealthCheck,
    HealthCheckInterval,
    HealthyThreshold,
    UnhealthyThreshold,
    MaxConnections,
    GlobalMaxConnections,
    StickyCookie,
    StickyTimeout,
    StickyTableSize,
    Mode,
    WaitBytes,
    Splice,
    StatisticsUrl,
    StatisticsAllow,
    AccessLog,
    ErrorLog,
    Threads,
    ShutdownTimeout,
    Host,
    Allow,
    Deny,
    RateLimit,
    Redirect,
    MaxBodySize,
    StripPrefix,
    RequestHeader,
    ResponseHeader,
    TrustedProxies,
    SendProxy,
    ShutdownDelay,
    AdminSocket,
    HealthUrl,
}

/// Which sections a key may appear in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Defaults,
    Entry,
    Both,
}

impl Key {
    pub const ALL: [Key; 50] = [
        Key::Listen,
        Key::TlsCertificate,
        Key::TlsKey,
        Key::TlsProtocols,
        Key::TlsClientCa,
        Key::TlsClientAuth,
        Key::BackendCa,
        Key::BackendTlsVerify,
        Key::Match,
        Key::Name,
        Key::ServerList,
        Key::LoadBalancer,
        Key::AttemptsCount,
        Key::OfflineTimeOut,
        Key::ConnectTimeout,
        Key::BackendTimeout,
        Key::IdleTimeout,
        Key::HeadTimeout,
        Key::HealthCheck,
        Key::HealthCheckInterval,
        Key::HealthyThreshold,
        Key::UnhealthyThreshold,
        Key::MaxConnections,
        Key::GlobalMaxConnections,
        Key::StickyCookie,
        Key::StickyTimeout,
        Key::StickyTableSize,
        Key::Mode,
        Key::WaitBytes,
        Key::Splice,
        Key::StatisticsUrl,
        Key::StatisticsAllow,
        Key::AccessLog,
        Key::ErrorLog,
        Key::Threads,
        Key::ShutdownTimeout,
        Key::Host,
        Key::Allow,
        Key::Deny,
        Key::RateLimit,
        Key::Redirect,
        Key::MaxBodySize,
        Key::StripPrefix,
        Key::RequestHeader,
        Key::ResponseHeader,
        Key::TrustedProxies,
        Key::SendProxy,
        Key::ShutdownDelay,
        Key::AdminSocket,
        Key::HealthUrl,
    ];

    /// The canonical spelling (what the docs and messages use).
    pub fn name(self) -> &'static str {
        match self {
            Key::Listen => "Listen",
            Key::TlsCertificate => "TLSCertificate",
            Key::TlsKey => "TLSKey",
            Key::TlsProtocols => "TLSProtocols",
            Key::TlsClientCa => "TLSClientCA",
            Key::TlsClientAuth => "TLSClientAuth",
            Key::BackendCa => "BackendCA",
            Key::BackendTlsVerify => "BackendTLSVerify",
            Key::Match => "Match",
            Key::Name => "Name",
            Key::ServerList => "ServerList",
            Key::LoadBalancer => "LoadBalancer",
            Key::AttemptsCount => "AttemptsCount",
            Key::OfflineTimeOut => "OfflineTimeOut",
            Key::ConnectTimeout => "ConnectTimeout",
            Key::BackendTimeout => "BackendTimeout",
            Key::IdleTimeout => "IdleTimeout",
            Key::HeadTimeout => "HeadTimeout",
            Key::HealthCheck => "HealthCheck",
            Key::HealthCheckInterval => "HealthCheckInterval",
            Key::HealthyThreshold => "HealthyThreshold",
            Key::UnhealthyThreshold => "UnhealthyThreshold",
            Key::MaxConnections => "MaxConnections",
            Key::GlobalMaxConnections => "GlobalMaxConnections",
            Key::StickyCookie => "StickyCookie",
            Key::StickyTimeout => "StickyTimeout",
            Key::StickyTableSize => "StickyTableSize",
            Key::Mode => "Mode",
            Key::WaitBytes => "WaitBytes",
            Key::Splice => "Splice",
            Key::StatisticsUrl => "StatisticsURL",
            Key::StatisticsAllow => "StatisticsAllow",
            Key::AccessLog => "AccessLog",
            Key::ErrorLog => "ErrorLog",
            Key::Threads => "Threads",
            Key::ShutdownTimeout => "ShutdownTimeout",
            Key::Host => "Host",
            Key::Allow => "Allow",
            Key::Deny => "Deny",
            Key::RateLimit => "RateLimit",
            Key::Redirect => "Redirect",
            Key::MaxBodySize => "MaxBodySize",
            Key::StripPrefix => "StripPrefix",
            Key::RequestHeader => "RequestHeader",
            Key::ResponseHeader => "ResponseHeader",
            Key::TrustedProxies => "TrustedProxies",
            Key::SendProxy => "SendProxy",
            Key::ShutdownDelay => "ShutdownDelay",
            Key::AdminSocket => "AdminSocket",
            Key::HealthUrl => "HealthURL",
        }
    }

    pub fn place(self) -> Place {
        match self {
            Key::TlsCertificate
            | Key::TlsKey
            | Key::TlsProtocols
            | Key::TlsClientCa
            | Key::TlsClientAuth
            | Key::HeadTimeout
            | Key::GlobalMaxConnections
            | Key::StatisticsUrl
            | Key::StatisticsAllow
            | Key::AccessLog
            | Key::ErrorLog
            | Key::Threads
            | Key::ShutdownTimeout
            | Key::ShutdownDelay
            | Key::AdminSocket
            | Key::HealthUrl
            | Key::TrustedProxies => Place::Defaults,
            Key::Match
            | Key::Name
            | Key::StickyCookie
            | Key::StickyTimeout
            | Key::Mode
            | Key::WaitBytes
            | Key::Host
            | Key::RateLimit
            | Key::Redirect
            | Key::StripPrefix => Place::Entry,
            // Listen: the defaults' are the http listeners; a tcp entry has its own
            // (resolve checks that an http entry has none).
            _ => Place::Both,
        }
    }

    /// Keys that may appear more than once in a section (their values add up).
    pub fn repeatable(self) -> bool {
        matches!(
            self,
            Key::Listen
                | Key::TlsCertificate
                | Key::Match
                | Key::ServerList
                | Key::StatisticsAllow
                | Key::Host
                | Key::Allow
                | Key::Deny
                | Key::RequestHeader
                | Key::ResponseHeader
                | Key::TrustedProxies
        )
    }
}
