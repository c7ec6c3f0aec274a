using System.Reflection;
using Microsoft.Extensions.DependencyInjection;

namespace ComposerSharp.Cli.Plugins;

/// <summary>
/// Entry point of a plugin assembly passed with <c>--plugin path.dll</c>: a public class with a public parameterless
/// constructor that registers the plugin's components, e.g. <c>services.AddAlgorithm&lt;MyAlgorithm&gt;()</c>.
/// </summary>
public interface IComposerSharpPlugin
{
    /// <summary>Adds the plugin's components and services.</summary>
    void ConfigureServices(IServiceCollection services);
}

/// <summary>Loads plugin assemblies and runs their <see cref="IComposerSharpPlugin"/> classes.</summary>
public static class PluginLoader
{
    /// <summary>
    /// Loads the assembly at <paramref name="path"/> into the default load context and calls
    /// <see cref="IComposerSharpPlugin.ConfigureServices"/> of every plugin class in it. Returns the plugin type names.
    /// </summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="InvalidOperationException">The assembly cannot be loaded or contains no plugin class.</exception>
    public static IReadOnlyList<string> Load(string path, IServiceCollection services)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new FileNotFoundException($"Plugin assembly '{path}' does not exist.", full);
        }

        Assembly assembly;
        try
        {
            assembly = Assembly.LoadFrom(full);
        }
        catch (Exception ex) when (ex is BadImageFormatException or FileLoadException)
        {
            throw new InvalidOperationException($"Plugin '{path}' is not a loadable .NET assembly: {ex.Message}", ex);
        }

        Type[] plugins;
        try
        {
            plugins = assembly.GetTypes()
                .Where(t => t is { IsClass: true, IsAbstract: false } && typeof(IComposerSharpPlugin).IsAssignableFrom(t))
                .ToArray();
        }
        catch (ReflectionTypeLoadException ex)
        {
            throw new InvalidOperationException(
                $"Plugin '{path}' references types that cannot be loaded: {string.Join("; ", ex.LoaderExceptions.Select(e => e?.Message))}", ex);
        }

        if (plugins.Length == 0)
        {
            throw new InvalidOperationException($"Plugin '{path}' has no public class implementing {nameof(IComposerSharpPlugin)}.");
        }

        foreach (Type t in plugins)
        {
            var plugin = (IComposerSharpPlugin)(Activator.CreateInstance(t)
                ?? throw new InvalidOperationException($"Plugin class {t.FullName} could not be created."));
            plugin.ConfigureServices(services);
        }

        return plugins.Select(t => t.FullName ?? t.Name).ToList();
    }
}
