using System.Reflection;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training.Optim;
using Microsoft.Extensions.DependencyInjection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Cli.Configuration;

/// <summary>The kinds of named component a config refers to.</summary>
public enum ComponentKind
{
    /// <summary>A model under <c>model:</c>.</summary>
    Model,
    /// <summary>A dataset under <c>train_loader.dataset:</c> / <c>eval_loader.dataset:</c>.</summary>
    Dataset,
    /// <summary>An algorithm under <c>algorithms:</c>.</summary>
    Algorithm,
    /// <summary>A callback under <c>callbacks:</c>.</summary>
    Callback,
    /// <summary>A logger destination under <c>loggers:</c>.</summary>
    Logger,
    /// <summary>An optimizer under <c>optimizer:</c> (a factory over the model's parameters, called after the move to the device).</summary>
    Optimizer,
    /// <summary>A learning-rate scheduler under <c>scheduler:</c>.</summary>
    Scheduler,
}

/// <summary>What a factory can use while building a component from its config section.</summary>
/// <param name="Services">The service provider (plugins' services included).</param>
/// <param name="RunFolder">The run folder (absolute path) where files such as metrics and checkpoints go.</param>
/// <param name="Seed">The run's seed.</param>
public sealed record ComponentContext(IServiceProvider Services, string RunFolder, int Seed)
{
    /// <summary>The token vocabulary of the training data, once its dataset is built (models size their embeddings from it).</summary>
    public ComposerSharp.Data.TokenVocabulary? Vocabulary { get; init; }

    /// <summary>The label names of the training data for classification (an eval set reuses them), or null.</summary>
    public IReadOnlyList<string>? Labels { get; init; }

    /// <summary>The tokenizer text datasets read with (the run's <c>tokenizer</c>, a pretrained folder's or a checkpoint's), or null for the registered <see cref="ComposerSharp.Data.ITextTokenizer"/>.</summary>
    public ComposerSharp.Data.ITextTokenizer? Tokenizer { get; init; }
}

/// <summary>
/// One named component registered in the service collection. Either <see cref="ImplementationType"/> is set, and
/// the component is built by binding its config keys (snake_case) to the parameters of its public constructor with
/// the most parameters, or <see cref="Factory"/> builds it from the section.
/// </summary>
/// <param name="Kind">The kind.</param>
/// <param name="Name">The name used in configs, e.g. <c>low_precision_layernorm</c>.</param>
/// <param name="ImplementationType">The type to construct, or null when <paramref name="Factory"/> is given.</param>
/// <param name="Factory">Builds the component from its section, or null.</param>
public sealed record ComponentRegistration(
    ComponentKind Kind,
    string Name,
    Type? ImplementationType,
    Func<ConfigSection, ComponentContext, object>? Factory);

/// <summary>
/// Registration of named components in Microsoft.Extensions.DependencyInjection, so that a user's algorithm is one
/// class and one line: <c>services.AddAlgorithm&lt;MyAlgorithm&gt;()</c>.
/// </summary>
public static class ComponentServiceCollectionExtensions
{
    /// <summary>
    /// Registers algorithm <typeparamref name="T"/> under its own <see cref="IAlgorithm.Name"/>, read from an instance
    /// built with its constructor defaults, so the name in configs, the name a checkpoint records and the name a
    /// checkpoint is re-created by are one. Its constructor parameters become its config keys (snake_case).
    /// </summary>
    /// <exception cref="InvalidOperationException"><typeparamref name="T"/> cannot be built with its constructor defaults (a parameter without a default); register it with <see cref="AddAlgorithm(IServiceCollection, string, Func{ConfigSection, ComponentContext, IAlgorithm})"/>.</exception>
    public static IServiceCollection AddAlgorithm<T>(this IServiceCollection services)
        where T : IAlgorithm => services.AddAlgorithm(typeof(T));

    /// <summary>Registers the algorithm type <paramref name="type"/> under its own <see cref="IAlgorithm.Name"/> (see <see cref="AddAlgorithm{T}(IServiceCollection)"/>).</summary>
    /// <exception cref="ArgumentException"><paramref name="type"/> does not implement <see cref="IAlgorithm"/>.</exception>
    /// <exception cref="InvalidOperationException"><paramref name="type"/> cannot be built with its constructor defaults.</exception>
    public static IServiceCollection AddAlgorithm(this IServiceCollection services, Type type)
    {
        ArgumentNullException.ThrowIfNull(type);
        if (!typeof(IAlgorithm).IsAssignableFrom(type))
        {
            throw new ArgumentException($"{type.FullName} does not implement IAlgorithm.", nameof(type));
        }

        return services.AddComponent(ComponentKind.Algorithm, NameWithDefaults(type), type);
    }

    /// <summary>
    /// Registers an algorithm built by <paramref name="factory"/> under <paramref name="name"/>, which must be the
    /// <see cref="IAlgorithm.Name"/> of what the factory builds: building one whose name differs is refused, because a
    /// checkpoint records the algorithm's own name and is re-created by it.
    /// </summary>
    public static IServiceCollection AddAlgorithm(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, IAlgorithm> factory) =>
        services.AddComponent(ComponentKind.Algorithm, name, factory);

    /// <summary>Registers callback <typeparamref name="T"/> under <paramref name="name"/>.</summary>
    public static IServiceCollection AddCallback<T>(this IServiceCollection services, string name)
        where T : ICallback => services.AddComponent(ComponentKind.Callback, name, typeof(T));

    /// <summary>Registers a callback built by <paramref name="factory"/>.</summary>
    public static IServiceCollection AddCallback(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, ICallback> factory) =>
        services.AddComponent(ComponentKind.Callback, name, factory);

    /// <summary>Registers a logger destination built by <paramref name="factory"/>.</summary>
    public static IServiceCollection AddLoggerDestination(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, ILoggerDestination> factory) =>
        services.AddComponent(ComponentKind.Logger, name, factory);

    /// <summary>
    /// Registers an optimizer: <paramref name="factory"/> reads the section (the keys besides <c>name</c>) and returns
    /// what creates the optimizer from the model's parameters once the Trainer has moved them to the device.
    /// </summary>
    public static IServiceCollection AddOptimizer(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, Func<IEnumerable<Parameter>, optim.Optimizer>> factory) =>
        services.AddComponent(ComponentKind.Optimizer, name, factory);

    /// <summary>
    /// Registers the optimizer whose settings record is <typeparamref name="TOptions"/> under <paramref name="name"/>:
    /// the section's keys bind to its properties by snake_case name, the record checks its values
    /// (<see cref="IOptimizerOptions.Validate"/>) and the CLI reports a refusal with the key.
    /// </summary>
    public static IServiceCollection AddOptimizer<TOptions>(this IServiceCollection services, string name)
        where TOptions : class, IOptimizerOptions, new() =>
        services.AddOptimizer(name, (s, _) =>
        {
            TOptions options = OptionsBinder.Bind<TOptions>(s, null, "name");
            try
            {
                options.Validate();
            }
            catch (ArgumentException ex)
            {
                string key = ex.ParamName is { Length: > 0 } p ? s.PathOf(Algorithm.ToSnakeCase(p)) : s.Path;
                throw new ConfigException($"'{key}': {ConfigException.LibraryMessage(ex)}", ex);
            }

            return options.Create;
        });

    /// <summary>Registers scheduler <typeparamref name="T"/> under <paramref name="name"/> (Composer's scheduler names); its constructor parameters become its config keys.</summary>
    public static IServiceCollection AddScheduler<T>(this IServiceCollection services, string name)
        where T : IScheduler => services.AddComponent(ComponentKind.Scheduler, name, typeof(T));

    /// <summary>Registers a model built by <paramref name="factory"/>.</summary>
    public static IServiceCollection AddModel(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, object> factory) =>
        services.AddComponent(ComponentKind.Model, name, factory);

    /// <summary>Registers a dataset built by <paramref name="factory"/>.</summary>
    public static IServiceCollection AddDataset(this IServiceCollection services, string name, Func<ConfigSection, ComponentContext, object> factory) =>
        services.AddComponent(ComponentKind.Dataset, name, factory);

    private static string NameWithDefaults(Type type)
    {
        using ServiceProvider none = new ServiceCollection().BuildServiceProvider();
        try
        {
            var algorithm = (IAlgorithm)ComponentCatalog.Bind(type, new ConfigSection("algorithms"), new ComponentContext(none, string.Empty, 0));
            return algorithm.Name;
        }
        catch (Exception ex) when (ex is ConfigException or TargetInvocationException or ArgumentException)
        {
            throw new InvalidOperationException(
                $"AddAlgorithm<{type.Name}>() takes the name from a {type.Name} built with its constructor defaults, which failed ({(ex as TargetInvocationException)?.InnerException?.Message ?? ex.Message}). " +
                "Give every constructor parameter a default, or register it with AddAlgorithm(name, factory).", ex);
        }
    }

    private static IServiceCollection AddComponent(this IServiceCollection services, ComponentKind kind, string name, Type type)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        services.AddSingleton(new ComponentRegistration(kind, name, type, null));
        return services;
    }

    private static IServiceCollection AddComponent(this IServiceCollection services, ComponentKind kind, string name, Func<ConfigSection, ComponentContext, object> factory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(factory);
        services.AddSingleton(new ComponentRegistration(kind, name, null, factory));
        return services;
    }
}

/// <summary>Builds registered components by name from config sections.</summary>
public sealed class ComponentCatalog
{
    private readonly IReadOnlyList<ComponentRegistration> _registrations;

    /// <summary>Creates the catalog over every registration in <paramref name="registrations"/> (later registrations of a name win).</summary>
    public ComponentCatalog(IEnumerable<ComponentRegistration> registrations) => _registrations = registrations.ToList();

    /// <summary>The registered names of <paramref name="kind"/>, sorted.</summary>
    public IReadOnlyList<string> Names(ComponentKind kind) =>
        _registrations.Where(r => r.Kind == kind).Select(r => r.Name).Distinct().Order(StringComparer.Ordinal).ToList();

    /// <summary>Builds component <paramref name="name"/> of <paramref name="kind"/> from <paramref name="args"/>.</summary>
    /// <exception cref="ConfigException">Unknown name (the message lists the registered ones), unknown or missing keys, or a bad value.</exception>
    public T Create<T>(ComponentKind kind, string name, ConfigSection args, ComponentContext context)
    {
        ComponentRegistration? registration = _registrations.LastOrDefault(r => r.Kind == kind && r.Name == name);
        if (registration is null)
        {
            string what = kind.ToString().ToLowerInvariant();
            throw new ConfigException($"Unknown {what} '{name}' at '{args.Path}'; registered {what}s: {string.Join(", ", Names(kind))}.");
        }

        object built;
        try
        {
            built = registration.Factory is not null
                ? registration.Factory(args, context)
                : Bind(registration.ImplementationType!, args, context);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is ArgumentException refusal)
        {
            throw ConfigException.ForRefusal(args, refusal, $"{kind.ToString().ToLowerInvariant()} '{name}': ");
        }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            throw new ConfigException($"Building {kind.ToString().ToLowerInvariant()} '{name}' from '{args.Path}' failed: {ex.InnerException.Message}", ex.InnerException);
        }
        catch (ArgumentException ex)
        {
            throw ConfigException.ForRefusal(args, ex, $"{kind.ToString().ToLowerInvariant()} '{name}': ");
        }
        catch (Exception ex) when (ex is FormatException or InvalidOperationException)
        {
            throw new ConfigException($"Building {kind.ToString().ToLowerInvariant()} '{name}' from '{args.Path}' failed: {ex.Message}", ex);
        }

        if (built is IAlgorithm algorithm && kind == ComponentKind.Algorithm && algorithm.Name != name)
        {
            throw new ConfigException(
                $"The algorithm registered as '{name}' (used at '{args.Path}') is a {built.GetType().Name} whose Name is '{algorithm.Name}'; a checkpoint would record '{algorithm.Name}' and could not re-create it. " +
                "Register it under its Name (services.AddAlgorithm<T>() does that).");
        }

        return built is T typed
            ? typed
            : throw new ConfigException($"The {kind.ToString().ToLowerInvariant()} registered as '{name}' is a {built.GetType().Name}, not a {typeof(T).Name}.");
    }

    /// <summary>
    /// Constructs <paramref name="type"/> through its public constructor with the most parameters: each parameter is
    /// read from the key of its snake_case name, else taken from the service provider, else its default.
    /// </summary>
    /// <exception cref="ConfigException">An unknown key, a missing required key, or a value of the wrong form.</exception>
    public static object Bind(Type type, ConfigSection args, ComponentContext context)
    {
        ConstructorInfo ctor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).FirstOrDefault()
            ?? throw new ConfigException($"{type.Name} has no public constructor.");
        ParameterInfo[] parameters = ctor.GetParameters();
        var keys = parameters.Where(p => IsConfigurable(p.ParameterType)).Select(p => Algorithm.ToSnakeCase(p.Name!)).ToList();
        args.RequireKnownKeys(keys, "option");
        var values = new object?[parameters.Length];
        for (int i = 0; i < parameters.Length; i++)
        {
            ParameterInfo p = parameters[i];
            string key = Algorithm.ToSnakeCase(p.Name!);
            if (IsConfigurable(p.ParameterType) && args.ContainsKey(key))
            {
                values[i] = OptionsBinder.Convert(args, key, p.ParameterType);
            }
            else if (!IsConfigurable(p.ParameterType) && context.Services.GetService(p.ParameterType) is { } service)
            {
                values[i] = service;
            }
            else if (p.HasDefaultValue)
            {
                values[i] = p.DefaultValue;
            }
            else if (IsNullable(p))
            {
                values[i] = null;
            }
            else
            {
                throw new ConfigException($"'{args.PathOf(key)}' is required by {type.Name}.");
            }
        }

        return ctor.Invoke(values);
    }

    private static bool IsNullable(ParameterInfo p) =>
        Nullable.GetUnderlyingType(p.ParameterType) is not null ||
        new NullabilityInfoContext().Create(p).WriteState == NullabilityState.Nullable;

    private static bool IsConfigurable(Type t) => OptionsBinder.IsBindable(t);
}
