using System.Globalization;
using ComposerSharp.Cli.Configuration;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Cli;

/// <summary>
/// One run per run folder: an exclusive lock on <c>.composersharp.lock</c> in the folder, held for the whole run.
/// The lock is the operating system's (on Linux an advisory <c>flock</c>, which .NET takes for
/// <see cref="FileShare.None"/>), so it is released when the process ends in any way, and a lock file left by a
/// crashed run is simply taken over, with a warning naming the process that left it. Who holds the lock (process id,
/// machine, start time) is written to <c>.composersharp.lock.info</c> for the message another run gets.
/// </summary>
public sealed class RunFolderLock : IDisposable
{
    /// <summary>The lock file's name inside the run folder.</summary>
    public const string FileName = ".composersharp.lock";

    private readonly FileStream _lock;
    private readonly string _infoPath;

    private RunFolderLock(FileStream stream, string infoPath)
    {
        _lock = stream;
        _infoPath = infoPath;
    }

    /// <summary>Takes the lock of <paramref name="runFolder"/> (creating the folder), before any other file of the run is touched.</summary>
    /// <param name="runFolder">The run folder.</param>
    /// <param name="logger">Receives the warning when a stale lock is taken over.</param>
    /// <exception cref="ConfigException">
    /// Another live process holds the lock (the message names it and what to do), or the folder or its lock file cannot
    /// be created or written (a read-only file system, no permission, a path through a file): the message names the
    /// folder and the system's reason.
    /// </exception>
    public static RunFolderLock Acquire(string runFolder, ILogger logger)
    {
        string path = Path.Combine(runFolder, FileName);
        string infoPath = path + ".info";
        FileStream stream;
        try
        {
            Directory.CreateDirectory(runFolder);
            stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException || (ex is IOException && !IsHeldByAnotherProcess(ex)))
        {
            throw NotWritable(runFolder, ex);
        }
        catch (IOException)
        {
            string holder = File.Exists(infoPath) ? File.ReadAllText(infoPath).Trim() : "another process";
            throw new ConfigException(
                $"The run folder '{runFolder}' is in use by {holder}. Two runs in one folder would mix their metrics and checkpoints: " +
                "wait for it to finish, or give this run another --run-name or --run-folder.");
        }

        if (File.Exists(infoPath))
        {
            string previous = File.ReadAllText(infoPath).Trim();
            if (previous.Length > 0)
            {
                logger.LogWarning("Taking over the lock of run folder {Folder}, left by {Previous}, which no longer holds it (it ended without releasing it).", runFolder, previous);
            }
        }

        try
        {
            File.WriteAllText(infoPath, string.Create(CultureInfo.InvariantCulture,
                $"process {Environment.ProcessId} on {Environment.MachineName}, started {DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}"));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            stream.Dispose();
            throw NotWritable(runFolder, ex);
        }

        return new RunFolderLock(stream, infoPath);
    }

    /// <summary>
    /// Whether opening the lock file failed because another open handle holds its lock (not because the file system
    /// refused to create it): .NET reports both as a plain <see cref="IOException"/>, told apart by the error code it
    /// carries (EWOULDBLOCK from <c>flock</c>: 11 on Linux, 35 on macOS; Windows' sharing and lock violations).
    /// </summary>
    private static bool IsHeldByAnotherProcess(Exception ex) =>
        ex.GetType() == typeof(IOException)
        && ex.HResult is 11 or 35 or unchecked((int)0x80070020) or unchecked((int)0x80070021);

    private static ConfigException NotWritable(string runFolder, Exception ex) => new(
        $"The run folder '{runFolder}' cannot be used: {ex.Message.TrimEnd('.')}. A run writes its lock, metrics, " +
        "checkpoints and plots there: give a writable --run-folder (or --run-name under a writable current directory).", ex);

    /// <summary>Releases the lock and removes the holder's description.</summary>
    public void Dispose()
    {
        try
        {
            File.Delete(_infoPath);
        }
        catch (IOException)
        {
            // The lock itself is what matters; a leftover description only makes the next run's warning.
        }

        _lock.Dispose();
    }
}
