/// Message type bytes sent by a client (frontend). The same byte means something else from a server.
public enum FrontendMessageID: UInt8, Sendable {
    case bind = 66  // B
    case close = 67  // C
    case copyData = 100  // d
    case copyDone = 99  // c
    case copyFail = 102  // f
    case describe = 68  // D
    case execute = 69  // E
    case flush = 72  // H
    case functionCall = 70  // F
    case parse = 80  // P
    case password = 112  // p (also SASLInitialResponse, SASLResponse, GSSResponse)
    case query = 81  // Q
    case sync = 83  // S
    case terminate = 88  // X
}

/// Message type bytes sent by a server (backend).
public enum BackendMessageID: UInt8, Sendable {
    case authentication = 82  // R
    case backendKeyData = 75  // K
    case bindComplete = 50  // 2
    case closeComplete = 51  // 3
    case commandComplete = 67  // C
    case copyData = 100  // d
    case copyDone = 99  // c
    case copyInResponse = 71  // G
    case copyOutResponse = 72  // H
    case copyBothResponse = 87  // W
    case dataRow = 68  // D
    case emptyQueryResponse = 73  // I
    case errorResponse = 69  // E
    case functionCallResponse = 86  // V
    case negotiateProtocolVersion = 118  // v
    case noData = 110  // n
    case noticeResponse = 78  // N
    case notificationResponse = 65  // A
    case parameterDescription = 116  // t
    case parameterStatus = 83  // S
    case parseComplete = 49  // 1
    case portalSuspended = 115  // s
    case readyForQuery = 90  // Z
    case rowDescription = 84  // T
}

/// Transaction status reported by ReadyForQuery.
public enum TransactionStatus: UInt8, Sendable {
    case idle = 73  // I
    case inTransaction = 84  // T
    case failed = 69  // E
}
