using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Tests.Support;

/// <summary>
/// An <see cref="ILoggerFactory"/> whose loggers record every message at every level (with its category), for tests
/// that assert on what is logged. Pass it wherever a logger factory is taken.
/// </summary>
internal sealed class CapturingLoggerFactory : ILoggerFactory
{
    private readonly ConcurrentQueue<(LogLevel Level, string Category, string Message)> _entries = new();

    /// <summary>Every message logged so far, in order.</summary>
    public IReadOnlyList<(LogLevel Level, string Category, string Message)> Entries => _entries.ToArray();

    /// <summary>The messages logged at <see cref="LogLevel.Warning"/>.</summary>
    public IEnumerable<string> Warnings => Entries.Where(e => e.Level == LogLevel.Warning).Select(e => e.Message);

    public ILogger CreateLogger(string categoryName) => new CapturingLogger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private sealed class CapturingLogger(CapturingLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner._entries.Enqueue((logLevel, category, formatter(state, exception)));
    }
}
