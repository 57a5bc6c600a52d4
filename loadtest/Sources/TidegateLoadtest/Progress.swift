import Foundation

/// The live progress line on standard error: rewritten in place on a terminal, one line every five
/// seconds otherwise (logs stay readable).
final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private let terminal = isatty(STDERR_FILENO) != 0
    private var lastPrinted = 0
    private var shown = false

    func update(second: Int, of total: Int, _ text: String) {
        self.lock.lock()
        defer { self.lock.unlock() }
        if self.terminal {
            FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
            self.shown = true
        } else if second - self.lastPrinted >= 5 || second == total {
            self.lastPrinted = second
            FileHandle.standardError.write(Data("\(text)\n".utf8))
        }
    }

    /// Ends the line in place (a terminal) before ordinary output.
    func finish() {
        self.lock.lock()
        defer { self.lock.unlock() }
        if self.shown { FileHandle.standardError.write(Data("\n".utf8)) }
        self.shown = false
        self.lastPrinted = 0
    }

    func say(_ text: String) {
        self.finish()
        FileHandle.standardError.write(Data("\(text)\n".utf8))
    }
}

