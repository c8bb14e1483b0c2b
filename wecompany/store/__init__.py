"""
Persistence behind one interface, :class:`wecompany.store.interface.IStore`.

:mod:`wecompany.store.sqlite` is the default durable store;
:mod:`wecompany.store.memory` answers the same way without threads, for tests.
"""
